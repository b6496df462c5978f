// One device: properties, latest values, a telemetry chart (server-bucketed history plus live
// readings folded in as they are stored), and its credentials.
import { useEffect, useMemo, useRef, useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError, apiPage } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import { live, useLiveState } from "../../live";
import { navigate, useLocation } from "../../router";
import { foldReading, numeric, RANGES, rangeWindow, ROLLUP, type RangeKey } from "../../series";
import type { Alert, Credential, Device, IssuedCredential, Latest, Point, Series, Uptime } from "../../types";
import { StateBadge, STATE_LABEL } from "./Devices";
import { Chart } from "../../components/Chart";
import { CommandsSection, TwinSection } from "../../components/Twin";
import { ago, Empty, ErrorBox, Loading, SecretOnce, SeverityBadge, StatusBadge, Time } from "../../components/ui";
import { NotFound } from "../../components/NotFound";
import { useSites } from "../sites/useSites";

export function DevicePage({ id }: { id: string }) {
  const device = useQuery({ queryKey: ["device", id], queryFn: () => api<Device>(`/api/v1/devices/${id}`) });
  if (device.isPending) return <Loading what="Loading device" />;
  if (device.isError) {
    if (device.error instanceof ApiError && device.error.status === 404) return <NotFound what="device" />;
    return <ErrorBox error={device.error} retry={() => device.refetch()} />;
  }
  return <DeviceView device={device.data} />;
}

function DeviceView({ device }: { device: Device }) {
  const latest = useQuery({
    queryKey: ["latest", device.id],
    queryFn: () => api<Latest>(`/api/v1/devices/${device.id}/telemetry/latest`),
    refetchInterval: 60_000,
  });
  const sites = useSites();
  const site = sites.data?.find((s) => s.id === device.site_id);
  const { canWrite } = useAccess();
  const [editing, setEditing] = useState(false);
  return (
    <>
      <div className="page-head">
        <h1>
          <code>{device.device_id}</code> {device.name && <span className="muted">{device.name}</span>}
        </h1>
        <StatusBadge status={device.status} />
        <StateBadge state={device.state} />
      </div>
      <div className="grid2">
        <section className="card">
          <div className="page-head">
            <h2>Properties</h2>
            {canWrite && device.status !== "decommissioned" && !editing && (
              <button className="btn small" onClick={() => setEditing(true)}>Edit</button>
            )}
          </div>
          {editing ? (
            <EditDevice device={device} onDone={() => setEditing(false)} />
          ) : (
          <dl className="props">
            <dt>Id</dt><dd><code>{device.id}</code></dd>
            <dt>Site</dt><dd>{site ? site.name : device.site_id ? "…" : <span className="muted">none</span>}</dd>
            <dt>Tags</dt><dd>{device.tags.length ? device.tags.map((t) => <span key={t} className="tag">{t}</span>) : <span className="muted">none</span>}</dd>
            <dt>Last seen</dt><dd data-testid="device-last-seen">{device.last_seen_at ? <Time value={device.last_seen_at} /> : <span className="muted">never</span>}</dd>
            <dt>Last message</dt><dd data-testid="last-seen">{latest.data ? ago(latest.data.last_seen) : "…"}</dd>
            <dt>Created</dt><dd><Time value={device.created_at} /></dd>
            <dt>Updated</dt><dd><Time value={device.updated_at} /></dd>
            {device.decommissioned_at && (<><dt>Decommissioned</dt><dd><Time value={device.decommissioned_at} /></dd></>)}
            {Object.entries(device.attributes).map(([k, v]) => (
              <div key={k} className="contents"><dt>{k}</dt><dd>{String(v)}</dd></div>
            ))}
          </dl>
          )}
        </section>
        <section className="card">
          <h2>Latest values</h2>
          {latest.isError ? (
            <ErrorBox error={latest.error} retry={() => latest.refetch()} />
          ) : !latest.data ? (
            <Loading />
          ) : latest.data.metrics.length === 0 ? (
            <Empty title="No telemetry stored yet." />
          ) : (
            <table className="table dense">
              <tbody>
                {latest.data.metrics.map((m) => (
                  <tr key={m.name}><td>{m.name}</td><td className="num">{String(m.value)}</td><td className="muted">{ago(m.time)}</td></tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      </div>
      <UptimeStrip device={device} />
      <Telemetry device={device} metrics={latest.data?.metrics.map((m) => m.name) ?? []} />
      <TwinSection device={device} />
      <CommandsSection device={device} />
      <DeviceAlerts device={device} />
      <Credentials device={device} />
    </>
  );
}

// Online/offline over the last 24 h or 7 d, from the device's state history: one coloured segment per
// state, widths proportional to time; "unknown" before its first state.
function UptimeStrip({ device }: { device: Device }) {
  const [window, setWindow] = useState<"24h" | "7d">("24h");
  const q = useQuery({
    queryKey: ["uptime", device.id, window],
    queryFn: () => api<Uptime>(`/api/v1/devices/${device.id}/uptime`, { query: { window } }),
    refetchInterval: 60_000,
  });
  const total = q.data ? (Date.parse(q.data.end) - Date.parse(q.data.start)) / 1000 : 0;
  return (
    <section className="card" data-testid="uptime">
      <div className="page-head">
        <h2>Uptime</h2>
        <div className="segmented" role="group" aria-label="Uptime window">
          {(["24h", "7d"] as const).map((w) => (
            <button key={w} className={`btn small${w === window ? " active" : ""}`} aria-pressed={w === window} onClick={() => setWindow(w)}>
              {w === "24h" ? "24 h" : "7 d"}
            </button>
          ))}
        </div>
      </div>
      {q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : !q.data ? (
        <Loading />
      ) : (
        <>
          <div className="uptime-strip" data-testid="uptime-strip" role="img"
            aria-label={q.data.segments.map((g) => `${STATE_LABEL[g.status] ?? g.status} from ${g.start} to ${g.end}`).join("; ")}>
            {q.data.segments.map((g) => {
              const secs = (Date.parse(g.end) - Date.parse(g.start)) / 1000;
              return (
                <span key={g.start} className={`uptime-seg state-${g.status}`} data-status={g.status}
                  style={{ width: `${total ? (100 * secs) / total : 0}%` }} title={`${g.status}: ${g.start} – ${g.end}`} />
              );
            })}
          </div>
          <p className="muted" data-testid="uptime-summary">
            {q.data.online_ratio === null
              ? "No state in this window (never seen)."
              : `Online ${(100 * q.data.online_ratio).toFixed(1)}% of the time with a known state` +
                Object.entries(q.data.seconds).filter(([k]) => k !== "online").map(([k, v]) => ` · ${STATE_LABEL[k] ?? k} ${Math.round(v / 60)} min`).join("")}
          </p>
        </>
      )}
    </section>
  );
}

function Telemetry({ device, metrics }: { device: Device; metrics: string[] }) {
  const { query } = useLocation();
  const { theme } = useAccess();
  const client = useQueryClient();
  const liveState = useLiveState();
  const range = (query.get("range") as RangeKey) in RANGES ? (query.get("range") as RangeKey) : "1h";
  const metric = query.get("metric") || metrics[0] || "";
  const setParam = (k: string, v: string) => {
    const next = new URLSearchParams(query);
    next.set(k, v);
    navigate(`/devices/${device.id}?${next}`, { replace: true });
  };

  const series = useQuery({
    queryKey: ["series", device.id, metric, range],
    queryFn: () => {
      const grain = ROLLUP[range];
      const span = rangeWindow(range, Date.now());
      return grain
        ? api<Series>(`/api/v1/devices/${device.id}/telemetry/history`, { query: { metric, grain, ...span } })
        : api<Series>(`/api/v1/devices/${device.id}/telemetry`, { query: { metric, ...span } });
    },
    enabled: metric !== "",
  });
  const [points, setPoints] = useState<Point[]>([]);
  // the metric the points in hand belong to: until the new series is in, they are the previous one's
  const [drawn, setDrawn] = useState(metric);
  useEffect(() => {
    setPoints(series.data?.points ?? []);
    setDrawn(metric);
  }, [series.data]); // eslint-disable-line react-hooks/exhaustive-deps

  const current = useRef({ metric, bucketMs: 60_000, range });
  current.current = { metric, bucketMs: (series.data?.bucket_s ?? 60) * 1000, range };
  const [liveCount, setLiveCount] = useState(0);

  useEffect(
    () =>
      live.watch(device.id, (readings, dropped) => {
        const { metric: m, bucketMs, range: r } = current.current;
        if (dropped > 0) client.invalidateQueries({ queryKey: ["series", device.id] });
        setPoints((prev) => {
          let next = prev;
          for (const p of readings) {
            const v = numeric(p.metrics[m]);
            if (v !== null) next = foldReading(next, p.t, v, bucketMs, Date.now() - RANGES[r]);
          }
          return next;
        });
        setLiveCount((n) => n + readings.length);
        client.setQueryData<Latest>(["latest", device.id], (old) => {
          if (!old || readings.length === 0) return old;
          const newest = readings.reduce((a, b) => (b.t > a.t ? b : a));
          const time = new Date(newest.t).toISOString();
          const byName = new Map(old.metrics.map((x) => [x.name, x]));
          for (const [name, value] of Object.entries(newest.metrics)) byName.set(name, { name, value, time });
          return { ...old, last_seen: time, metrics: [...byName.values()].sort((a, b) => a.name.localeCompare(b.name)) };
        });
      }),
    [device.id, client],
  );

  const options = useMemo(() => (metrics.includes(metric) || !metric ? metrics : [metric, ...metrics]), [metrics, metric]);

  return (
    <section className="card">
      <div className="page-head">
        <h2>Telemetry</h2>
        <select aria-label="Metric" value={metric} onChange={(e) => setParam("metric", e.target.value)} disabled={options.length === 0}>
          {options.map((m) => <option key={m} value={m}>{m}</option>)}
        </select>
        <div className="segmented" role="group" aria-label="Range">
          {(Object.keys(RANGES) as RangeKey[]).map((r) => (
            <button key={r} className={r === range ? "on" : ""} onClick={() => setParam("range", r)}>{r}</button>
          ))}
        </div>
        <span className="spacer" />
        <span className={`live live-${liveState}`} data-testid="live-state" title="Live updates over WebSocket">
          {liveState === "live" ? "● live" : liveState}
        </span>
        {series.data && (
          <span className="muted small">
            {ROLLUP[range] ? `${ROLLUP[range] === "day" ? "daily" : "hourly"} rollups` : `bucket ${series.data.bucket_s}s`}
            {series.data.archive_days ? ` · ${series.data.archive_days} days from the archive` : ""} · {liveCount} live
          </span>
        )}
      </div>
      {!metric ? (
        <Empty title="No telemetry yet.">The chart appears when the device sends its first reading.</Empty>
      ) : series.isError ? (
        <ErrorBox error={series.error} retry={() => series.refetch()} />
      ) : (
        <>
          {series.isPending && <Loading what="Loading telemetry" />}
          <Chart points={points} metric={drawn} theme={theme} />
          {series.data && points.length === 0 && <p className="muted">No {metric} readings in the last {range}.</p>}
        </>
      )}
    </section>
  );
}

function DeviceAlerts({ device }: { device: Device }) {
  const q = useQuery({
    queryKey: ["alerts", "device", device.device_id],
    queryFn: async () => (await apiPage<Alert>("/api/v1/alerts", { query: { device_id: device.device_id, state: ["open", "acknowledged"], limit: 20 } })).items,
    refetchInterval: 30_000,
  });
  return (
    <section className="card">
      <div className="page-head">
        <h2>Open alerts</h2>
        <Link to={`/alerts?state=&device=${encodeURIComponent(device.device_id)}`}>all alerts of this device →</Link>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No open alerts." />
      ) : (
        <table className="table dense" data-testid="device-alerts">
          <tbody>
            {q.data.map((a) => (
              <tr key={a.id}><td><SeverityBadge severity={a.severity} /></td><td><code>{a.rule_id}</code></td><td>{a.explanation.text}</td><td>{a.state}</td><td>{ago(a.opened_at)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Credentials({ device }: { device: Device }) {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const creds = useQuery({ queryKey: ["credentials", device.id], queryFn: () => api<Credential[]>(`/api/v1/devices/${device.id}/credentials`) });
  const [secret, setSecret] = useState<string | null>(null);
  const done = (c: IssuedCredential | void) => {
    if (c) setSecret(c.token);
    client.invalidateQueries({ queryKey: ["credentials", device.id] });
  };
  const base = `/api/v1/devices/${device.id}/credentials`;
  const issue = useMutation({ mutationFn: () => api<IssuedCredential>(base, { method: "POST" }), onSuccess: done });
  const rotate = useMutation({ mutationFn: (cid: string) => api<IssuedCredential>(`${base}/${cid}/rotate`, { method: "POST" }), onSuccess: done });
  const revoke = useMutation({ mutationFn: (cid: string) => api<void>(`${base}/${cid}`, { method: "DELETE" }), onSuccess: done });
  const failed = issue.error ?? rotate.error ?? revoke.error;
  return (
    <section className="card">
      <div className="page-head">
        <h2>Credentials</h2>
        {canWrite && device.status !== "decommissioned" && (
          <button className="btn" onClick={() => issue.mutate()} disabled={issue.isPending}>Issue token</button>
        )}
      </div>
      {secret && <SecretOnce token={secret} onDone={() => setSecret(null)} />}
      {failed && <ErrorBox error={failed} />}
      {creds.isPending ? (
        <Loading />
      ) : creds.isError ? (
        <ErrorBox error={creds.error} retry={() => creds.refetch()} />
      ) : creds.data.length === 0 ? (
        <Empty title="No credentials.">{canWrite ? "Issue a token so the device can send over HTTP." : ""}</Empty>
      ) : (
        <table className="table dense" data-testid="credentials">
          <thead><tr><th>Id</th><th>Issued</th><th>Rotated</th><th>State</th>{canWrite && <th />}</tr></thead>
          <tbody>
            {creds.data.map((c) => (
              <tr key={c.id}>
                <td><code>{c.id.slice(0, 8)}</code></td>
                <td><Time value={c.created_at} /></td>
                <td><Time value={c.rotated_at} /></td>
                <td>{c.revoked_at ? <span className="badge badge-disabled">revoked</span> : <span className="badge badge-active">valid</span>}</td>
                {canWrite && (
                  <td className="actions">
                    {!c.revoked_at && (
                      <>
                        <button className="btn small" onClick={() => confirm("Rotate? The current token stops working now.") && rotate.mutate(c.id)}>Rotate</button>
                        <button className="btn small danger" onClick={() => confirm("Revoke? The device can no longer send with it.") && revoke.mutate(c.id)}>Revoke</button>
                      </>
                    )}
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function EditDevice({ device, onDone }: { device: Device; onDone: () => void }) {
  const client = useQueryClient();
  const sites = useSites();
  const [form, setForm] = useState({ name: device.name, site_id: device.site_id ?? "", tags: device.tags.join(", "), status: device.status });
  const save = useMutation({
    mutationFn: () =>
      api<Device>(`/api/v1/devices/${device.id}`, {
        method: "PATCH",
        body: { name: form.name, site_id: form.site_id || null, tags: form.tags.split(/[\s,]+/).filter(Boolean), status: form.status },
      }),
    onSuccess: (d) => {
      client.setQueryData(["device", device.id], d);
      client.invalidateQueries({ queryKey: ["devices"] });
      client.invalidateQueries({ queryKey: ["fleet-summary"] });
      onDone();
    },
  });
  const decommission = useMutation({
    mutationFn: () => api<Device>(`/api/v1/devices/${device.id}/decommission`, { method: "POST" }),
    onSuccess: (d) => {
      client.setQueryData(["device", device.id], d);
      client.invalidateQueries({ queryKey: ["credentials", device.id] });
      client.invalidateQueries({ queryKey: ["devices"] });
      client.invalidateQueries({ queryKey: ["fleet-summary"] });
      onDone();
    },
  });
  return (
    <form
      className="stack"
      aria-label="Edit device"
      onSubmit={(e) => {
        e.preventDefault();
        save.mutate();
      }}
    >
      <label>Name <input value={form.name} maxLength={200} onChange={(e) => setForm({ ...form, name: e.target.value })} /></label>
      <label>
        Site
        <select value={form.site_id} onChange={(e) => setForm({ ...form, site_id: e.target.value })}>
          <option value="">no site</option>
          {(sites.data ?? []).map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}
        </select>
      </label>
      <label>Tags <input value={form.tags} placeholder="comma separated" onChange={(e) => setForm({ ...form, tags: e.target.value })} /></label>
      <label>
        Status
        <select value={form.status} onChange={(e) => setForm({ ...form, status: e.target.value as Device["status"] })}>
          {["provisioned", "active", "disabled"].map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
      </label>
      {(save.error ?? decommission.error) && <ErrorBox error={save.error ?? decommission.error} />}
      <div className="row">
        <button className="btn primary" disabled={save.isPending}>Save</button>
        <button type="button" className="btn" onClick={onDone}>Cancel</button>
        <span className="spacer" />
        <button
          type="button"
          className="btn danger"
          onClick={() => confirm(`Decommission ${device.device_id}? Its credentials are revoked and it can no longer send. This cannot be undone.`) && decommission.mutate()}
        >
          Decommission
        </button>
      </div>
    </form>
  );
}
