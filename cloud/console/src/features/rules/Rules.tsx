// Rules: the list with enable/disable, a form (and the rule's JSON) to create or edit one, errors
// shown at the field the API's code names, and a preview against recent telemetry drawn on a chart
// with the threshold line and the points where the rule would have opened and closed alerts.
import { useEffect, useMemo, useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "../../api";
import { useAccess } from "../../lib/access";
import { navigate, useLocation } from "../../router";
import { conditionText, FIELD_OF_CODE, markers, OPERATORS } from "../../rules";
import { SEVERITIES, type DevicePage, type Preview, type Rule, type Series } from "../../types";
import { EChart, cssVar } from "../../components/EChart";
import { Empty, ErrorBox, Loading, SeverityBadge, Time } from "../../components/ui";

const BLANK: Rule = { id: "", name: "", kind: "threshold", severity: "major", metric: "", operator: "GT", threshold: 0, window_s: 0, enabled: true };

export function RulesPage() {
  const { query } = useLocation();
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const rules = useQuery({ queryKey: ["rules"], queryFn: () => api<Rule[]>("/api/v1/rules") });
  const editing = query.get("edit");
  const creating = query.has("new");
  const toggle = useMutation({
    mutationFn: (r: Rule) => {
      const { created_at: _c, updated_at: _u, version: _v, ...body } = r;
      return api<Rule>(`/api/v1/rules/${encodeURIComponent(r.id)}`, { method: "PUT", body: { ...body, enabled: !r.enabled } });
    },
    onSuccess: () => client.invalidateQueries({ queryKey: ["rules"] }),
  });
  const current = editing ? rules.data?.find((r) => r.id === editing) : undefined;
  return (
    <>
      <div className="page-head">
        <h1>Rules</h1>
        {canWrite && !creating && (
          <button className="btn primary" onClick={() => navigate("/rules?new")}>New rule</button>
        )}
      </div>
      {(creating || (editing && current)) && (
        <RuleEditor key={editing ?? "new"} initial={current ?? BLANK} isNew={creating} onDone={() => navigate("/rules")} />
      )}
      {toggle.isError && <ErrorBox error={toggle.error} />}
      {rules.isPending ? (
        <Loading />
      ) : rules.isError ? (
        <ErrorBox error={rules.error} retry={() => rules.refetch()} />
      ) : rules.data.length === 0 ? (
        <Empty title="No rules yet.">{canWrite ? "Create one with “New rule”; preview it on recent data before saving." : "A tenant admin can create rules."}</Empty>
      ) : (
        <table className="table dense" data-testid="rules-table">
          <thead>
            <tr><th>Rule</th><th>Name</th><th>Severity</th><th>Condition</th><th>Version</th><th>Updated</th><th>Enabled</th>{canWrite && <th />}</tr>
          </thead>
          <tbody>
            {rules.data.map((r) => (
              <tr key={r.id} className={editing === r.id ? "expanded" : ""}>
                <td><code>{r.id}</code></td>
                <td>{r.name}</td>
                <td><SeverityBadge severity={r.severity} /></td>
                <td><code>{conditionText(r)}</code></td>
                <td className="num">{r.version}</td>
                <td><Time value={r.updated_at} /></td>
                <td>
                  <label className="switch">
                    <input type="checkbox" aria-label={`Enable ${r.id}`} checked={r.enabled !== false} disabled={!canWrite || toggle.isPending} onChange={() => toggle.mutate(r)} />
                    {r.enabled !== false ? "on" : "off"}
                  </label>
                </td>
                {canWrite && (
                  <td className="actions">
                    <button className="btn small" onClick={() => navigate(`/rules?edit=${encodeURIComponent(r.id)}`)}>Edit</button>
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function withoutServerFields(r: Rule): Rule {
  const { created_at: _c, updated_at: _u, ...rest } = r;
  return rest;
}

function RuleEditor({ initial, isNew, onDone }: { initial: Rule; isNew: boolean; onDone: () => void }) {
  const client = useQueryClient();
  const { canWrite } = useAccess();
  const [rule, setRule] = useState<Rule>(withoutServerFields(initial));
  const [json, setJson] = useState(JSON.stringify(withoutServerFields(initial), null, 2));
  const [jsonError, setJsonError] = useState<string | null>(null);
  const [hours, setHours] = useState(24);
  const body = () => {
    const b: Rule = { ...rule };
    if (isNew) delete b.version;
    if (!b.name) delete b.name;
    if ((b.kind ?? "threshold") === "threshold" && !b.window_s) delete b.window_s;
    return b;
  };
  const save = useMutation({
    mutationFn: () =>
      isNew
        ? api<Rule>("/api/v1/rules", { method: "POST", body: body() })
        : api<Rule>(`/api/v1/rules/${encodeURIComponent(initial.id)}`, { method: "PUT", body: body() }),
    onSuccess: () => {
      client.invalidateQueries({ queryKey: ["rules"] });
      onDone();
    },
  });
  const update = (patch: Partial<Rule>) => {
    save.reset(); // the last refusal no longer describes what is in the form
    const next = { ...rule, ...patch };
    setRule(next);
    setJson(JSON.stringify(next, null, 2));
  };
  const preview = useMutation({ mutationFn: () => api<Preview>("/api/v1/rules/preview", { method: "POST", body: { rule: body(), hours } }) });
  const failure = save.error ?? preview.error;
  const badField = failure instanceof ApiError ? FIELD_OF_CODE[failure.code] : undefined;
  const field = (name: string) => ({ "aria-invalid": badField === name || undefined, className: badField === name ? "invalid" : undefined });
  const threshold = (rule.kind ?? "threshold") === "threshold";

  return (
    <section className="card" aria-label={isNew ? "New rule" : `Edit rule ${initial.id}`}>
      <div className="page-head">
        <h2>{isNew ? "New rule" : <>Edit <code>{initial.id}</code></>}</h2>
        <span className="spacer" />
        <button className="btn small" onClick={onDone}>Close</button>
      </div>
      <div className="grid2">
        <form
          className="form-grid"
          aria-label="Rule"
          onSubmit={(e) => {
            e.preventDefault();
            save.mutate();
          }}
        >
          <label>Id <input aria-label="Rule id" {...field("id")} value={rule.id} disabled={!isNew} onChange={(e) => update({ id: e.target.value })} placeholder="hot-water" /></label>
          <label>Name <input aria-label="Rule name" {...field("name")} value={rule.name ?? ""} onChange={(e) => update({ name: e.target.value })} /></label>
          <label>
            Kind
            <select aria-label="Rule kind" {...field("kind")} value={rule.kind ?? "threshold"} onChange={(e) => update({ kind: e.target.value as Rule["kind"] })}>
              <option value="threshold">threshold</option>
              <option value="heartbeat">heartbeat</option>
            </select>
          </label>
          <label>
            Severity
            <select aria-label="Rule severity" {...field("severity")} value={rule.severity} onChange={(e) => update({ severity: e.target.value as Rule["severity"] })}>
              {SEVERITIES.map((s) => <option key={s} value={s}>{s}</option>)}
            </select>
          </label>
          {threshold ? (
            <>
              <label>Metric <input aria-label="Metric" {...field("metric")} value={rule.metric ?? ""} onChange={(e) => update({ metric: e.target.value })} placeholder="temp" /></label>
              <label>
                Operator
                <select aria-label="Operator" {...field("operator")} value={rule.operator ?? "GT"} onChange={(e) => update({ operator: e.target.value })}>
                  {Object.entries(OPERATORS).map(([k, v]) => <option key={k} value={k}>{v} ({k})</option>)}
                </select>
              </label>
              <label>Threshold <input aria-label="Threshold" {...field("threshold")} type="number" step="any" value={String(rule.threshold ?? "")} onChange={(e) => update({ threshold: e.target.value === "" ? undefined : Number(e.target.value) })} /></label>
              <label>
                Clear at
                <input aria-label="Clear threshold" {...field("threshold")} type="number" step="any" placeholder="(the threshold)" value={rule.clear_threshold === undefined || rule.clear_threshold === null ? "" : String(rule.clear_threshold)} onChange={(e) => update({ clear_threshold: e.target.value === "" ? undefined : Number(e.target.value) })} />
              </label>
              <label>Window (s) <input aria-label="Window seconds" {...field("window_s")} type="number" min={0} value={String(rule.window_s ?? 0)} onChange={(e) => update({ window_s: Number(e.target.value) })} /></label>
            </>
          ) : (
            <p className="muted">Heartbeat rules are edited as JSON (interval_s, stale_after, offline_after, alert_on).</p>
          )}
          <label className="check"><input type="checkbox" checked={rule.enabled !== false} onChange={(e) => update({ enabled: e.target.checked })} /> Enabled</label>
          <details open={badField === "json" || badField === "scope" || badField === "interval_s" || badField === "flapping" || undefined}>
            <summary>Rule as JSON (scope, flapping, heartbeat fields)</summary>
            <textarea
              aria-label="Rule JSON"
              className={`json ${badField && ["json", "scope", "interval_s", "flapping"].includes(badField) ? "invalid" : ""}`}
              rows={10}
              value={json}
              onChange={(e) => {
                setJson(e.target.value);
                try {
                  const parsed = JSON.parse(e.target.value);
                  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("a rule is a JSON object");
                  setRule(parsed);
                  setJsonError(null);
                } catch (err) {
                  setJsonError((err as Error).message);
                }
              }}
            />
            {jsonError && <div className="field-error">{jsonError}</div>}
          </details>
          {failure && (
            <div className="error" role="alert" data-testid="rule-error">
              <strong>{failure instanceof ApiError ? failure.message : String(failure)}</strong> {failure instanceof ApiError && <code>{failure.code}</code>}
            </div>
          )}
          <div className="row">
            {canWrite && <button className="btn primary" disabled={save.isPending || !!jsonError}>{isNew ? "Create rule" : "Save"}</button>}
            <select aria-label="Preview range" value={hours} onChange={(e) => setHours(Number(e.target.value))}>
              {[1, 6, 24, 72, 168].map((h) => <option key={h} value={h}>last {h < 24 ? `${h}h` : `${h / 24}d`}</option>)}
            </select>
            <button type="button" className="btn" disabled={preview.isPending || !!jsonError} onClick={() => preview.mutate()}>Preview</button>
          </div>
        </form>
        <div>{preview.data ? <PreviewView preview={preview.data} hours={hours} /> : <Empty title="Preview">See what this rule would have done on the last {hours}h of telemetry, before saving it.</Empty>}</div>
      </div>
    </section>
  );
}

function PreviewView({ preview, hours }: { preview: Preview; hours: number }) {
  const opened = preview.actions.filter((a) => a.action === "OpenAlert");
  const devices = [...new Set(preview.actions.map((a) => a.device_id))];
  const [device, setDevice] = useState(devices[0] ?? "");
  useEffect(() => setDevice(devices[0] ?? ""), [preview]); // eslint-disable-line react-hooks/exhaustive-deps
  return (
    <div data-testid="rule-preview">
      <p>
        <strong>{opened.length}</strong> alert{opened.length === 1 ? "" : "s"} would have opened on <strong>{new Set(opened.map((a) => a.device_id)).size}</strong> device(s);{" "}
        {preview.readings} readings from {preview.devices} device(s) in the last {hours}h checked.
      </p>
      {devices.length > 0 && (
        <label className="row">
          Device
          <select aria-label="Preview device" value={device} onChange={(e) => setDevice(e.target.value)}>
            {devices.map((d) => <option key={d} value={d}>{d}</option>)}
          </select>
        </label>
      )}
      {device && preview.rule.metric && <PreviewChart preview={preview} deviceId={device} hours={hours} />}
      {preview.actions.length > 0 && (
        <table className="table dense">
          <tbody>
            {preview.actions.slice(0, 50).map((a, i) => (
              <tr key={i}><td><Time value={new Date(a.at_ms).toISOString()} /></td><td>{a.action}</td><td><code>{a.device_id}</code></td><td>{a.text}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function PreviewChart({ preview, deviceId, hours }: { preview: Preview; deviceId: string; hours: number }) {
  const { theme } = useAccess();
  const metric = preview.rule.metric!;
  const dev = useQuery({
    queryKey: ["device-by-id", deviceId],
    queryFn: () => api<DevicePage>("/api/v1/devices", { query: { q: deviceId, limit: 50 } }),
  });
  const uuid = dev.data?.items.find((d) => d.device_id === deviceId)?.id;
  const [to] = useState(() => Date.now());
  const series = useQuery({
    queryKey: ["series", uuid, metric, "preview", hours],
    queryFn: () => api<Series>(`/api/v1/devices/${uuid}/telemetry`, { query: { metric, from: new Date(to - hours * 3_600_000).toISOString(), to: new Date(to).toISOString() } }),
    enabled: !!uuid,
  });
  const points = useMemo(() => (series.data?.points ?? []).map((p) => [p[0], p[1]] as [number, number]), [series.data]);
  const marks = useMemo(() => markers(preview.actions, deviceId, points), [preview, deviceId, points]);
  const option = useMemo(() => {
    const text = cssVar("--text-muted");
    const grid = cssVar("--border");
    const accent = cssVar("--accent");
    const bad = cssVar("--bad");
    const ok = cssVar("--ok");
    const th = typeof preview.rule.threshold === "number" ? preview.rule.threshold : null;
    const clear = typeof preview.rule.clear_threshold === "number" ? preview.rule.clear_threshold : null;
    return {
      animation: false,
      grid: { left: 48, right: 16, top: 24, bottom: 28 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "time", axisLabel: { color: text }, axisLine: { lineStyle: { color: grid } } },
      yAxis: { type: "value", scale: true, axisLabel: { color: text }, splitLine: { lineStyle: { color: grid } } },
      series: [
        {
          name: metric,
          type: "line",
          data: points,
          showSymbol: false,
          lineStyle: { color: accent, width: 2 },
          markLine: {
            symbol: "none",
            silent: true,
            data: [
              ...(th !== null ? [{ yAxis: th, name: "threshold", lineStyle: { color: bad, type: "solid" }, label: { formatter: `threshold ${th}`, color: bad, position: "insideEndTop" } }] : []),
              ...(clear !== null ? [{ yAxis: clear, name: "clear", lineStyle: { color: ok, type: "dashed" }, label: { formatter: `clears ${clear}`, color: ok, position: "insideEndBottom" } }] : []),
            ],
          },
        },
        {
          name: "would fire",
          type: "scatter",
          symbol: "triangle",
          symbolSize: 12,
          data: marks.filter((m) => m[2] === "open").map((m) => [m[0], m[1]]),
          itemStyle: { color: bad },
        },
        {
          name: "would clear",
          type: "scatter",
          symbol: "circle",
          symbolSize: 9,
          data: marks.filter((m) => m[2] === "close").map((m) => [m[0], m[1]]),
          itemStyle: { color: ok },
        },
      ],
    };
  }, [points, marks, preview, metric, theme]);
  if (dev.isError || series.isError) return <ErrorBox error={dev.error ?? series.error} />;
  if (!uuid || series.isPending) return <Loading what="Loading telemetry" />;
  return <EChart option={option} testId="preview-chart" label={`${metric} of ${deviceId} with the rule's threshold`} probe={{ points: points.length, fired: marks.filter((m) => m[2] === "open").length }} />;
}
