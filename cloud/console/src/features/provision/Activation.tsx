// Activation codes: a tenant admin makes a batch (for a site, with tags and a device profile); the
// codes are shown once to print or hand to installers, who claim devices with them on site. The
// list shows each code's state (never the code), and unused ones can be revoked.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useSites } from "../sites/useSites";
import type { Page } from "../../paging";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";
import { csvOf } from "./logic";

type Code = {
  id: string;
  batch: string;
  site_id: string | null;
  tags: string[];
  profile: string | null;
  expires_at: string;
  used_at: string | null;
  revoked_at: string | null;
  device: string | null;
  created_by: string;
  created_at: string;
};
type Batch = { batch: string; expires_at: string; codes: string[] };

export function codeState(c: Code, now = Date.now()): "used" | "revoked" | "expired" | "unused" {
  if (c.used_at) return "used";
  if (c.revoked_at) return "revoked";
  return Date.parse(c.expires_at) <= now ? "expired" : "unused";
}

function NewBatch({ onMade }: { onMade: (b: Batch) => void }) {
  const sites = useSites();
  const [count, setCount] = useState("10");
  const [site, setSite] = useState("");
  const [tags, setTags] = useState("");
  const [profile, setProfile] = useState("");
  const [days, setDays] = useState("14");
  const make = useMutation({
    mutationFn: () =>
      api<Batch>("/api/v1/activation-codes", {
        method: "POST",
        body: {
          count: Number(count), site_id: site || null, tags: tags.split(/[,\s]+/).filter(Boolean), profile: profile.trim() || null,
          expires_in_days: Number(days),
        },
      }),
    onSuccess: onMade,
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    make.mutate();
  };
  return (
    <section className="card">
      <form className="form-row" onSubmit={submit} aria-label="New activation codes">
        <input aria-label="How many" type="number" min={1} max={500} required value={count} onChange={(e) => setCount(e.target.value)} />
        <select aria-label="Site" value={site} onChange={(e) => setSite(e.target.value)}>
          <option value="">No site</option>
          {(sites.data ?? []).map((s) => (
            <option key={s.id} value={s.id}>{s.name}</option>
          ))}
        </select>
        <input aria-label="Tags" placeholder="tags (floor=2 hvac)" value={tags} onChange={(e) => setTags(e.target.value)} />
        <input aria-label="Profile" placeholder="device profile (optional)" value={profile} onChange={(e) => setProfile(e.target.value)} />
        <label className="inline">
          valid for
          <input aria-label="Days valid" type="number" min={1} max={90} required value={days} onChange={(e) => setDays(e.target.value)} /> days
        </label>
        <button className="btn primary" disabled={make.isPending}>Make codes</button>
      </form>
      {make.error && <ErrorBox error={make.error} />}
    </section>
  );
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  URL.revokeObjectURL(url);
}

export function ActivationPage() {
  const client = useQueryClient();
  const sites = useSites();
  const [shown, setShown] = useState<Batch | null>(null);
  const codes = useQuery({ queryKey: ["activation-codes"], queryFn: () => api<Page<Code>>("/api/v1/activation-codes", { query: { limit: 200 } }) });
  const done = () => client.invalidateQueries({ queryKey: ["activation-codes"] });
  const revoke = useMutation({ mutationFn: (id: string) => api(`/api/v1/activation-codes/${id}`, { method: "DELETE" }), onSuccess: done });
  const revokeBatch = useMutation({ mutationFn: (b: string) => api(`/api/v1/activation-codes/batches/${b}`, { method: "DELETE" }), onSuccess: done });
  const siteName = (id: string | null) => (id ? (sites.data ?? []).find((s) => s.id === id)?.name ?? "—" : "—");
  return (
    <>
      <h1>Activation codes</h1>
      <p className="muted note">
        Installers claim a device on site with a code: <code>pulse gateway device claim CODE --device-id ID</code> on the gateway, or{" "}
        <code>POST /ingest/v1/activate</code> from the device itself. Each code works once, until it expires; the device gets the batch's
        site, tags and profile, and counts against the subscription's device limit.
      </p>
      <NewBatch
        onMade={(b) => {
          setShown(b);
          done();
        }}
      />
      {shown && (
        <div className="secret" role="dialog" aria-label="New activation codes">
          <p>
            <strong>{shown.codes.length} code(s), shown once</strong>, valid until <Time value={shown.expires_at} />. Print or download them
            now: Pulse keeps only hashes.
          </p>
          <pre data-testid="activation-codes">{shown.codes.join("\n")}</pre>
          <div className="row">
            <button className="btn" onClick={() => download(`pulse-activation-codes-${shown.batch.slice(0, 8)}.csv`, csvOf(["code", "expires_at"], shown.codes.map((c) => [c, shown.expires_at])))}>
              Download CSV
            </button>
            <button className="btn primary" onClick={() => setShown(null)}>I have stored them</button>
          </div>
        </div>
      )}
      {(revoke.error || revokeBatch.error) && <ErrorBox error={revoke.error ?? revokeBatch.error} />}
      {codes.isPending ? (
        <Loading />
      ) : codes.isError ? (
        <ErrorBox error={codes.error} retry={() => codes.refetch()} />
      ) : codes.data.items.length === 0 ? (
        <Empty title="No activation codes yet.">Make a batch above and hand the codes to your installers.</Empty>
      ) : (
        <table className="table" data-testid="activation-table">
          <thead>
            <tr><th>Batch</th><th>Site</th><th>Tags</th><th>Profile</th><th>State</th><th>Expires</th><th>Device</th><th /></tr>
          </thead>
          <tbody>
            {codes.data.items.map((c) => {
              const state = codeState(c);
              return (
                <tr key={c.id} data-testid={`code-${state}`}>
                  <td><code>{c.batch.slice(0, 8)}</code></td>
                  <td>{siteName(c.site_id)}</td>
                  <td>{c.tags.join(", ") || "—"}</td>
                  <td>{c.profile ?? "—"}</td>
                  <td><span className={`badge badge-code-${state}`}>{state}</span></td>
                  <td><Time value={c.revoked_at ?? c.expires_at} /></td>
                  <td>{c.device ? <Link to={`/devices/${c.device}`}>open</Link> : "—"}</td>
                  <td className="actions">
                    {state === "unused" && (
                      <>
                        <button className="btn small danger" onClick={() => revoke.mutate(c.id)}>Revoke</button>
                        <button className="btn small danger" onClick={() => window.confirm("Revoke every unused code of this batch?") && revokeBatch.mutate(c.batch)}>
                          Revoke batch
                        </button>
                      </>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {codes.data?.next_cursor && <p className="muted">Showing the newest 200 codes.</p>}
    </>
  );
}
