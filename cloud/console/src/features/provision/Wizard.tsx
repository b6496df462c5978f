// The provisioning wizard: identity -> site and tags -> rules -> credentials (shown once). Nothing
// is created before the last step, so going back and forth changes nothing in the fleet.
import { useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useSites } from "../sites/useSites";
import type { Device, IssuedCredential, Rule } from "../../types";
import { ErrorBox, SecretOnce } from "../../components/ui";
import { DEVICE_ID, TAG, inScope, type RuleScope } from "./logic";

const STEPS = ["Identity", "Site and tags", "Rules", "Credentials"];

type Draft = { device_id: string; name: string; profile: string; site_id: string; tags: string };

function tagsOf(d: Draft): string[] {
  return d.tags.split(/[,\s]+/).map((t) => t.trim()).filter(Boolean);
}

export function WizardPage() {
  const sites = useSites();
  const rules = useQuery({ queryKey: ["rules"], queryFn: () => api<Rule[]>("/api/v1/rules") });
  const [step, setStep] = useState(0);
  const [d, setD] = useState<Draft>({ device_id: "", name: "", profile: "", site_id: "", tags: "" });
  const [made, setMade] = useState<{ device: Device; token: IssuedCredential } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const tags = tagsOf(d);
  const idError = d.device_id && !DEVICE_ID.test(d.device_id) ? "1-128 letters, digits, '_', '-', '.', ':'" : null;
  const badTag = tags.find((t) => !TAG.test(t));
  const canNext = [d.device_id !== "" && !idError, !badTag, true, false][step];
  const device = { device_id: d.device_id, site_id: d.site_id || null, tags };
  const watching = (rules.data ?? []).filter((r) => r.enabled !== false && inScope(r.scope as RuleScope, device));

  async function create() {
    setBusy(true);
    setError(null);
    try {
      const body = {
        device_id: d.device_id, name: d.name, site_id: d.site_id || null, tags, status: "active",
        attributes: d.profile ? { profile: d.profile } : {},
      };
      const created = await api<Device>("/api/v1/devices", { method: "POST", body });
      const token = await api<IssuedCredential>(`/api/v1/devices/${created.id}/credentials`, { method: "POST" });
      setMade({ device: created, token });
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <h1>Provision a device</h1>
      <ol className="steps" aria-label="Steps">
        {STEPS.map((s, i) => (
          <li key={s} className={i === step ? "active" : i < step ? "done" : ""} aria-current={i === step ? "step" : undefined}>
            {i + 1}. {s}
          </li>
        ))}
      </ol>
      <section className="card wizard" aria-label={STEPS[step]}>
        {step === 0 && (
          <>
            <p className="muted">The id the device sends as (MQTT topic and message <code>device</code>), and how people will call it.</p>
            <label>
              Device id
              <input aria-label="Device id" value={d.device_id} aria-invalid={idError ? true : undefined} onChange={(e) => setD({ ...d, device_id: e.target.value.trim() })} />
            </label>
            {idError && <div className="error" role="alert">{idError}</div>}
            <label>
              Name
              <input aria-label="Device name" value={d.name} maxLength={200} onChange={(e) => setD({ ...d, name: e.target.value })} />
            </label>
            <label>
              Profile (optional)
              <input aria-label="Profile" placeholder="e.g. env-sensor" value={d.profile} onChange={(e) => setD({ ...d, profile: e.target.value })} />
            </label>
          </>
        )}
        {step === 1 && (
          <>
            <label>
              Site
              <select aria-label="Site" value={d.site_id} onChange={(e) => setD({ ...d, site_id: e.target.value })}>
                <option value="">No site</option>
                {(sites.data ?? []).map((s) => (
                  <option key={s.id} value={s.id}>{s.name}</option>
                ))}
              </select>
            </label>
            <label>
              Tags
              <input aria-label="Tags" placeholder="floor=2 hvac" value={d.tags} onChange={(e) => setD({ ...d, tags: e.target.value })} />
            </label>
            <p className="muted">Separate tags with spaces or commas; <code>name=value</code> tags are what rules select by.</p>
            {badTag && <div className="error" role="alert">Tag “{badTag}”: tags are 1-64 letters, digits or _ . : = / -</div>}
          </>
        )}
        {step === 2 && (
          <>
            <p className="muted">Rules choose their devices by site, tags and ids. With this site and these tags:</p>
            {rules.isError && <ErrorBox error={rules.error} />}
            {watching.length === 0 ? (
              <p data-testid="rules-none">No rule watches this device yet. <Link to="/rules">Rules</Link> can be added or changed later.</p>
            ) : (
              <ul data-testid="rules-watching">
                {watching.map((r) => (
                  <li key={r.id}>
                    <strong>{r.name || r.id}</strong> <span className="muted">({r.severity}{r.metric ? `, ${r.metric}` : ""})</span>
                  </li>
                ))}
              </ul>
            )}
            <p className="muted">{(rules.data ?? []).length - watching.length} other rule(s) do not apply to it.</p>
          </>
        )}
        {step === 3 && !made && (
          <>
            <p>
              Create <strong>{d.device_id}</strong>
              {d.name && <> ({d.name})</>}
              {d.site_id && <> at {(sites.data ?? []).find((s) => s.id === d.site_id)?.name}</>}
              {tags.length > 0 && <> with tags {tags.join(", ")}</>}, active, and its access token.
            </p>
            {error !== null && <ErrorBox error={error} />}
            <button className="btn primary" onClick={create} disabled={busy}>
              {busy ? "Creating…" : "Create device and token"}
            </button>
          </>
        )}
        {step === 3 && made && (
          <>
            <SecretOnce token={made.token.token} onDone={() => setMade(null)} label="Device token">
              <p>
                <strong>{made.device.device_id} is registered.</strong> Copy its token now: Pulse keeps only a hash and will not show it
                again. The device sends it as <code>Authorization: Bearer …</code> to <code>/ingest/v1/telemetry</code>.
              </p>
            </SecretOnce>
            <p>
              <Link to={`/devices/${made.device.id}`}>Open the device</Link> · <a href="/app/devices/new">Provision another</a>
            </p>
          </>
        )}
      </section>
      {!made && (
        <div className="row">
          {step > 0 && (
            <button className="btn" onClick={() => setStep(step - 1)}>
              Back
            </button>
          )}
          {step < 3 && (
            <button className="btn primary" disabled={!canNext} onClick={() => setStep(step + 1)}>
              Next
            </button>
          )}
        </div>
      )}
    </>
  );
}
