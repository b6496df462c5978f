// Notifications: channels (with "send test"), routing rules, the delivery log with dead letters
// and retry; escalation policies; on-call schedules with the 14-day timeline.
// API: API-CONTRACT.md (helper "notify"); a cloud without it shows an empty state, not an error.
import { Fragment, useMemo, useState } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "../api";
import { Link, useAccess } from "../App";
import { usePaging, type Page } from "../paging";
import { navigate, useLocation } from "../router";
import { gaps, layoutTimeline } from "../timeline";
import { KINDS } from "../features/notify/kinds";
import { SEVERITIES, type Channel, type ChannelKind, type Delivery, type EscalationPolicy, type Route, type Schedule, type Timeline } from "../types";
import { EChart, PALETTE, cssVar } from "../components/EChart";
import { ago, Empty, ErrorBox, Loading, Pager, Time } from "../components/ui";
import { useSites } from "./Devices";

const CONFIG_EXAMPLE: Record<ChannelKind, object> = {
  slack: { webhook_url: "https://hooks.slack.com/services/..." },
  pagerduty: { routing_key: "..." },
  teams: { webhook_url: "https://..." },
  webhook: { url: "https://example.com/pulse", secret: "..." },
  email: { to: ["oncall@example.com"] },
  snmp: { host: "192.0.2.10", port: 162, community: "public" },
  mqtt: { url: "mqtts://broker.example.com:8883", topic: "pulse/alerts" },
};

function notAvailable(e: unknown): boolean {
  return e instanceof ApiError && e.status === 404 && e.code !== "api.not_found";
}

function Failure({ error, retry }: { error: unknown; retry?: () => void }) {
  return notAvailable(error) ? <Empty title="Notifications are not available on this cloud yet." /> : <ErrorBox error={error} retry={retry} />;
}

function useChannels() {
  return useQuery({ queryKey: ["channels"], queryFn: () => api<Channel[] | Page<Channel>>("/api/v1/notify/channels", { query: { limit: 500 } }).then(items) });
}
function useSchedules() {
  return useQuery({ queryKey: ["schedules"], queryFn: () => api<Schedule[] | Page<Schedule>>("/api/v1/oncall/schedules", { query: { limit: 500 } }).then(items) });
}
function usePolicies() {
  return useQuery({ queryKey: ["policies"], queryFn: () => api<EscalationPolicy[] | Page<EscalationPolicy>>("/api/v1/escalation-policies", { query: { limit: 500 } }).then(items) });
}
/** Lists may come as a plain list or as a page; the console asks for up to 500 (the API's largest page). */
function items<T>(x: T[] | Page<T>): T[] {
  return Array.isArray(x) ? x : x.items;
}

export function NotificationsPage() {
  const { query } = useLocation();
  const tab = query.get("tab") ?? "channels";
  return (
    <>
      <h1>Notifications</h1>
      <div className="tabs" role="tablist" aria-label="Notifications">
        {[["channels", "Channels"], ["routes", "Routing rules"], ["deliveries", "Delivery log"]].map(([k, label]) => (
          <button key={k} role="tab" aria-selected={tab === k} className={tab === k ? "on" : ""} onClick={() => navigate(`/notifications?tab=${k}`, { replace: true })}>
            {label}
          </button>
        ))}
      </div>
      {tab === "channels" ? <Channels /> : tab === "routes" ? <Routes /> : <Deliveries />}
    </>
  );
}

function Channels() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const q = useChannels();
  const [form, setForm] = useState({ name: "", kind: "webhook" as ChannelKind, config: JSON.stringify(CONFIG_EXAMPLE.webhook, null, 2) });
  const [tested, setTested] = useState<Record<string, string>>({});
  const done = () => client.invalidateQueries({ queryKey: ["channels"] });
  const create = useMutation({
    mutationFn: () => api<Channel>("/api/v1/notify/channels", { method: "POST", body: { name: form.name, kind: form.kind, config: JSON.parse(form.config), enabled: true } }),
    onSuccess: () => {
      setForm({ ...form, name: "" });
      done();
    },
  });
  const test = useMutation({
    mutationFn: (c: Channel) => api<{ delivery_id: string }>(`/api/v1/notify/channels/${c.id}/test`, { method: "POST" }).then((r) => [c.id, r.delivery_id] as const),
    onSuccess: ([id, delivery]) => setTested((t) => ({ ...t, [id]: delivery })),
  });
  const toggle = useMutation({
    mutationFn: (c: Channel) => api<Channel>(`/api/v1/notify/channels/${c.id}`, { method: "PUT", body: { name: c.name, kind: c.kind, config: c.config, enabled: !c.enabled } }),
    onSuccess: done,
  });
  const remove = useMutation({ mutationFn: (c: Channel) => api<void>(`/api/v1/notify/channels/${c.id}`, { method: "DELETE" }), onSuccess: done });
  let configOk = true;
  try {
    JSON.parse(form.config);
  } catch {
    configOk = false;
  }
  const failed = create.error ?? test.error ?? toggle.error ?? remove.error;
  return (
    <>
      {canWrite && (
        <form
          className="card form-grid"
          aria-label="New channel"
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <label>Name <input required value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} placeholder="ops-slack" /></label>
          <label>
            Kind
            <select value={form.kind} onChange={(e) => { const kind = e.target.value as ChannelKind; setForm({ ...form, kind, config: JSON.stringify(CONFIG_EXAMPLE[kind], null, 2) }); }}>
              {KINDS.map((k) => <option key={k}>{k}</option>)}
            </select>
          </label>
          <label>Config <textarea aria-label="Channel config" className={`json ${configOk ? "" : "invalid"}`} rows={4} value={form.config} onChange={(e) => setForm({ ...form, config: e.target.value })} /></label>
          <div className="row"><button className="btn primary" disabled={!configOk || create.isPending}>Add channel</button></div>
        </form>
      )}
      {failed && <Failure error={failed} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No channels yet.">Add Slack, PagerDuty, Teams, a webhook, e-mail, SNMP or MQTT, then route alerts to them.</Empty>
      ) : (
        <table className="table dense" data-testid="channels-table">
          <thead><tr><th>Name</th><th>Kind</th><th>Config</th><th>Enabled</th><th>Created</th><th /></tr></thead>
          <tbody>
            {q.data.map((c) => (
              <tr key={c.id}>
                <td>{c.name}</td>
                <td><span className="tag">{c.kind}</span></td>
                <td className="small"><code>{JSON.stringify(c.config)}</code></td>
                <td><input type="checkbox" aria-label={`Enable ${c.name}`} checked={c.enabled} disabled={!canWrite} onChange={() => toggle.mutate(c)} /></td>
                <td><Time value={c.created} /></td>
                <td className="actions">
                  {tested[c.id] && <Link to={`/notifications?tab=deliveries&channel=${c.id}`}>test sent →</Link>}
                  {canWrite && <button className="btn small" onClick={() => test.mutate(c)}>Send test</button>}
                  {canWrite && <button className="btn small danger" onClick={() => confirm(`Delete channel ${c.name}?`) && remove.mutate(c)}>Delete</button>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function Routes() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const q = useQuery({ queryKey: ["routes"], queryFn: () => api<Route[] | Page<Route>>("/api/v1/notify/routes", { query: { limit: 500 } }).then(items) });
  const channels = useChannels();
  const policies = usePolicies();
  const sites = useSites();
  const channelName = new Map((channels.data ?? []).map((c) => [c.id, c.name]));
  const blank = { name: "", min_severity: "warning", alert_types: "", sites: [] as string[], channels: [] as string[], escalation_policy: "", throttle_s: 300 };
  const [form, setForm] = useState(blank);
  const done = () => client.invalidateQueries({ queryKey: ["routes"] });
  const create = useMutation({
    mutationFn: () =>
      api<Route>("/api/v1/notify/routes", {
        method: "POST",
        body: {
          name: form.name,
          enabled: true,
          min_severity: form.min_severity,
          alert_types: form.alert_types.split(/[\s,]+/).filter(Boolean),
          sites: form.sites,
          device_tags: {},
          channels: form.channels,
          escalation_policy: form.escalation_policy || null,
          throttle_s: form.throttle_s,
        },
      }),
    onSuccess: () => {
      setForm(blank);
      done();
    },
  });
  const remove = useMutation({ mutationFn: (r: Route) => api<void>(`/api/v1/notify/routes/${r.id}`, { method: "DELETE" }), onSuccess: done });
  const toggle = useMutation({
    mutationFn: (r: Route) => {
      const { id: _id, created: _c, ...body } = r as Route & { created?: string };
      return api<Route>(`/api/v1/notify/routes/${r.id}`, { method: "PUT", body: { ...body, enabled: !r.enabled } });
    },
    onSuccess: done,
  });
  const multi = (e: React.ChangeEvent<HTMLSelectElement>) => [...e.target.selectedOptions].map((o) => o.value);
  return (
    <>
      {canWrite && (
        <form className="card form-grid" aria-label="New routing rule" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <label>Name <input required value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} placeholder="critical to on-call" /></label>
          <label>
            At least
            <select value={form.min_severity} onChange={(e) => setForm({ ...form, min_severity: e.target.value })}>
              {SEVERITIES.map((s) => <option key={s}>{s}</option>)}
            </select>
          </label>
          <label>Alert types <input value={form.alert_types} onChange={(e) => setForm({ ...form, alert_types: e.target.value })} placeholder="empty = all (threshold, heartbeat, gateway_offline)" /></label>
          <label>Sites <select multiple value={form.sites} onChange={(e) => setForm({ ...form, sites: multi(e) })}>{(sites.data ?? []).map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}</select></label>
          <label>Channels <select multiple aria-label="Route channels" value={form.channels} onChange={(e) => setForm({ ...form, channels: multi(e) })}>{(channels.data ?? []).map((c) => <option key={c.id} value={c.id}>{c.name}</option>)}</select></label>
          <label>
            Escalation
            <select value={form.escalation_policy} onChange={(e) => setForm({ ...form, escalation_policy: e.target.value })}>
              <option value="">none</option>
              {(policies.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
            </select>
          </label>
          <label>Throttle (s) <input type="number" min={0} value={form.throttle_s} onChange={(e) => setForm({ ...form, throttle_s: Number(e.target.value) })} /></label>
          <div className="row"><button className="btn primary" disabled={create.isPending}>Add routing rule</button></div>
        </form>
      )}
      {(create.error ?? remove.error ?? toggle.error) && <Failure error={create.error ?? remove.error ?? toggle.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No routing rules.">Without one, alerts open in the inbox but nobody is notified.</Empty>
      ) : (
        <table className="table dense" data-testid="routes-table">
          <thead><tr><th>Name</th><th>At least</th><th>Types</th><th>Channels</th><th>Escalation</th><th className="num">Throttle</th><th>Enabled</th><th /></tr></thead>
          <tbody>
            {q.data.map((r) => (
              <tr key={r.id}>
                <td>{r.name}</td>
                <td>{r.min_severity}</td>
                <td>{r.alert_types.length ? r.alert_types.join(", ") : <span className="muted">all</span>}</td>
                <td>{r.channels.map((c) => <span key={c} className="tag">{channelName.get(c) ?? c.slice(0, 8)}</span>)}</td>
                <td>{r.escalation_policy ? (policies.data ?? []).find((p) => p.id === r.escalation_policy)?.name ?? "…" : <span className="muted">—</span>}</td>
                <td className="num">{r.throttle_s}s</td>
                <td><input type="checkbox" aria-label={`Enable ${r.name}`} checked={r.enabled} disabled={!canWrite} onChange={() => toggle.mutate(r)} /></td>
                <td className="actions">{canWrite && <button className="btn small danger" onClick={() => confirm(`Delete ${r.name}?`) && remove.mutate(r)}>Delete</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function Deliveries() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const { query } = useLocation();
  const f = { status: query.get("status") ?? "", channel_id: query.get("channel") ?? "", alert_id: query.get("alert") ?? "" };
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["deliveries", f, paging.cursor],
    queryFn: () => api<Page<Delivery>>("/api/v1/notify/deliveries", { query: { ...f, limit: 50, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
    refetchInterval: 10_000,
  });
  const [open, setOpen] = useState<string | null>(null);
  const retry = useMutation({
    mutationFn: (d: Delivery) => api<Delivery>(`/api/v1/notify/deliveries/${d.id}/retry`, { method: "POST" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["deliveries"] }),
  });
  const setStatus = (s: string) => {
    const next = new URLSearchParams(query);
    if (s) next.set("status", s);
    else next.delete("status");
    navigate(`/notifications?${next}`, { replace: true });
  };
  return (
    <>
      <div className="filters">
        <div className="segmented" role="group" aria-label="Delivery status">
          {["", "pending", "sending", "delivered", "failed", "dead"].map((s) => (
            <button key={s} className={f.status === s ? "on" : ""} onClick={() => setStatus(s)}>{s === "dead" ? "dead letters" : s || "all"}</button>
          ))}
        </div>
      </div>
      {retry.isError && <ErrorBox error={retry.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.items.length === 0 ? (
        <Empty title={f.status === "dead" ? "No dead letters." : "No deliveries yet."} />
      ) : (
        <>
          <table className="table dense" data-testid="deliveries-table">
            <thead><tr><th>Created</th><th>Channel</th><th>Event</th><th>Alert</th><th>Status</th><th className="num">Attempts</th><th>Next attempt</th><th>Last error</th><th /></tr></thead>
            <tbody>
              {q.data.items.map((d) => (
                <Fragment key={d.id}>
                  <tr>
                    <td><button className="linkish" onClick={() => setOpen(open === d.id ? null : d.id)}>{ago(d.created)}</button></td>
                    <td>{d.channel_name} <span className="tag">{d.kind}</span></td>
                    <td>{d.event}</td>
                    <td>{d.alert_id ?? <span className="muted">—</span>}</td>
                    <td><span className={`badge badge-delivery-${d.status}`}>{d.status}</span></td>
                    <td className="num">{d.attempts}</td>
                    <td>{d.next_attempt_at ? <Time value={d.next_attempt_at} /> : <span className="muted">—</span>}</td>
                    <td className="small">{d.last_error}</td>
                    <td className="actions">{canWrite && d.status === "dead" && <button className="btn small" onClick={() => retry.mutate(d)}>Retry</button>}</td>
                  </tr>
                  {open === d.id && <tr className="detail-row"><td colSpan={9}><AttemptLog id={d.id} /></td></tr>}
                </Fragment>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="deliveries" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}

function AttemptLog({ id }: { id: string }) {
  const q = useQuery({ queryKey: ["delivery", id], queryFn: () => api<Delivery>(`/api/v1/notify/deliveries/${id}`) });
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} />;
  const log = q.data.attempt_log ?? [];
  return log.length === 0 ? <span className="muted">No attempts yet.</span> : (
    <table className="table dense">
      <thead><tr><th>#</th><th>At</th><th>Outcome</th><th>Status</th><th className="num">ms</th><th>Error</th></tr></thead>
      <tbody>{log.map((a) => <tr key={a.n}><td>{a.n}</td><td><Time value={a.at} /></td><td>{a.outcome}</td><td>{a.status_code ?? "—"}</td><td className="num">{a.duration_ms}</td><td>{a.error}</td></tr>)}</tbody>
    </table>
  );
}

// --- escalation policies --------------------------------------------------------------------

export function EscalationPage() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const q = usePolicies();
  const channels = useChannels();
  const schedules = useSchedules();
  const targetName = (t: { channel: string } | { schedule: string }) =>
    "channel" in t ? `#${(channels.data ?? []).find((c) => c.id === t.channel)?.name ?? "…"}` : `on-call: ${(schedules.data ?? []).find((s) => s.id === t.schedule)?.name ?? "…"}`;
  type Level = { delay_s: number; target: string };
  const [name, setName] = useState("");
  const [repeat, setRepeat] = useState(0);
  const [levels, setLevels] = useState<Level[]>([{ delay_s: 0, target: "" }]);
  const create = useMutation({
    mutationFn: () =>
      api<EscalationPolicy>("/api/v1/escalation-policies", {
        method: "POST",
        body: {
          name,
          repeat,
          levels: levels.map((l) => {
            const [kind, id] = l.target.split(":");
            return { delay_s: l.delay_s, targets: id ? [kind === "schedule" ? { schedule: id } : { channel: id }] : [] };
          }),
        },
      }),
    onSuccess: () => {
      setName("");
      setLevels([{ delay_s: 0, target: "" }]);
      client.invalidateQueries({ queryKey: ["policies"] });
    },
  });
  const remove = useMutation({ mutationFn: (p: EscalationPolicy) => api<void>(`/api/v1/escalation-policies/${p.id}`, { method: "DELETE" }), onSuccess: () => client.invalidateQueries({ queryKey: ["policies"] }) });
  return (
    <>
      <h1>Escalation policies</h1>
      <p className="muted note">If nobody acknowledges an alert, each level notifies its targets after its delay; the whole policy repeats as often as set.</p>
      {canWrite && (
        <form className="card form-grid" aria-label="New escalation policy" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <label>Name <input required value={name} onChange={(e) => setName(e.target.value)} /></label>
          {levels.map((l, i) => (
            <label key={i}>
              Level {i + 1}
              <span className="row">
                <input type="number" min={0} aria-label={`Level ${i + 1} delay`} value={l.delay_s} onChange={(e) => setLevels(levels.map((x, j) => (j === i ? { ...x, delay_s: Number(e.target.value) } : x)))} />
                <span className="muted">s, then</span>
                <select aria-label={`Level ${i + 1} target`} value={l.target} onChange={(e) => setLevels(levels.map((x, j) => (j === i ? { ...x, target: e.target.value } : x)))}>
                  <option value="">choose…</option>
                  {(channels.data ?? []).map((c) => <option key={c.id} value={`channel:${c.id}`}>channel {c.name}</option>)}
                  {(schedules.data ?? []).map((s) => <option key={s.id} value={`schedule:${s.id}`}>on call in {s.name}</option>)}
                </select>
              </span>
            </label>
          ))}
          <div className="row">
            <button type="button" className="btn small" disabled={levels.length >= 5} onClick={() => setLevels([...levels, { delay_s: 900, target: "" }])}>Add level</button>
            <button type="button" className="btn small" disabled={levels.length <= 1} onClick={() => setLevels(levels.slice(0, -1))}>Remove level</button>
          </div>
          <label>Repeat <input type="number" min={0} max={10} value={repeat} onChange={(e) => setRepeat(Number(e.target.value))} /></label>
          <div className="row"><button className="btn primary" disabled={create.isPending}>Create policy</button></div>
        </form>
      )}
      {(create.error ?? remove.error) && <Failure error={create.error ?? remove.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No escalation policies." />
      ) : (
        <table className="table dense" data-testid="policies-table">
          <thead><tr><th>Name</th><th>Levels</th><th>Repeat</th><th /></tr></thead>
          <tbody>
            {q.data.map((p) => (
              <tr key={p.id}>
                <td>{p.name}</td>
                <td>
                  <ol className="levels">
                    {p.levels.map((l, i) => <li key={i}>after {l.delay_s}s: {l.targets.map(targetName).join(", ") || <span className="muted">nobody</span>}</li>)}
                  </ol>
                </td>
                <td>{p.repeat}×</td>
                <td className="actions">{canWrite && <button className="btn small danger" onClick={() => confirm(`Delete ${p.name}?`) && remove.mutate(p)}>Delete</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

// --- on-call schedules ----------------------------------------------------------------------

export function OncallPage() {
  const { canWrite } = useAccess();
  const { query } = useLocation();
  const client = useQueryClient();
  const q = useSchedules();
  const selected = query.get("schedule") ?? q.data?.[0]?.id ?? null;
  const blank = { name: "", time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC", rotation: "weekly", handoff: "09:00", members: "" };
  const [form, setForm] = useState(blank);
  const create = useMutation({
    mutationFn: () =>
      api<Schedule>("/api/v1/oncall/schedules", {
        method: "POST",
        body: {
          name: form.name,
          time_zone: form.time_zone,
          layers: [
            {
              name: "primary",
              rotation: form.rotation,
              handoff: form.handoff,
              handoff_weekday: form.rotation === "weekly" ? 0 : null,
              start: new Date(new Date().setHours(0, 0, 0, 0)).toISOString(),
              members: form.members.split(/\s*,\s*/).filter(Boolean).map((name) => ({ name, channel: null })),
            },
          ],
          overrides: [],
        },
      }),
    onSuccess: (s) => {
      setForm(blank);
      client.invalidateQueries({ queryKey: ["schedules"] });
      navigate(`/oncall?schedule=${s.id}`, { replace: true });
    },
  });
  return (
    <>
      <h1>On-call schedules</h1>
      {canWrite && (
        <form className="card form-row" aria-label="New schedule" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <input required aria-label="Schedule name" placeholder="schedule name" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
          <input aria-label="Time zone" value={form.time_zone} onChange={(e) => setForm({ ...form, time_zone: e.target.value })} />
          <select aria-label="Rotation" value={form.rotation} onChange={(e) => setForm({ ...form, rotation: e.target.value })}><option>weekly</option><option>daily</option></select>
          <input aria-label="Handoff" type="time" value={form.handoff} onChange={(e) => setForm({ ...form, handoff: e.target.value })} />
          <input required aria-label="Members" placeholder="members, in order: ana, bo, cy" value={form.members} onChange={(e) => setForm({ ...form, members: e.target.value })} />
          <button className="btn primary" disabled={create.isPending}>Create schedule</button>
        </form>
      )}
      {create.isError && <Failure error={create.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No schedules yet." />
      ) : (
        <>
          <div className="tabs" role="tablist" aria-label="Schedules">
            {q.data.map((s) => (
              <button key={s.id} role="tab" aria-selected={s.id === selected} className={s.id === selected ? "on" : ""} onClick={() => navigate(`/oncall?schedule=${s.id}`, { replace: true })}>{s.name}</button>
            ))}
          </div>
          {selected && q.data.find((s) => s.id === selected) && <ScheduleView schedule={q.data.find((s) => s.id === selected)!} />}
        </>
      )}
    </>
  );
}

function ScheduleView({ schedule }: { schedule: Schedule }) {
  const { canWrite, theme } = useAccess();
  const client = useQueryClient();
  const now = useQuery({ queryKey: ["oncall-now", schedule.id], queryFn: () => api<{ member: { name: string } | null; layer: string | null; until: string | null }>(`/api/v1/oncall/schedules/${schedule.id}/now`), refetchInterval: 60_000 });
  const tl = useQuery({ queryKey: ["timeline", schedule.id], queryFn: () => api<Timeline>(`/api/v1/oncall/schedules/${schedule.id}/timeline`, { query: { days: 14 } }) });
  const [ov, setOv] = useState({ member: "", start: "", end: "" });
  const addOverride = useMutation({
    mutationFn: () => {
      const override = { start: new Date(ov.start).toISOString(), end: new Date(ov.end).toISOString(), member: { name: ov.member, channel: null } };
      const body = { name: schedule.name, time_zone: schedule.time_zone, layers: schedule.layers, overrides: [...schedule.overrides, override] };
      return api<Schedule>(`/api/v1/oncall/schedules/${schedule.id}`, { method: "PUT", body });
    },
    onSuccess: () => {
      setOv({ member: "", start: "", end: "" });
      client.invalidateQueries({ queryKey: ["schedules"] });
      client.invalidateQueries({ queryKey: ["timeline", schedule.id] });
      client.invalidateQueries({ queryKey: ["oncall-now", schedule.id] });
    },
  });
  const layout = useMemo(() => (tl.data ? layoutTimeline(tl.data.segments, Date.parse(tl.data.from), Date.parse(tl.data.to)) : null), [tl.data]);
  const option = useMemo(() => {
    if (!layout) return null;
    const text = cssVar("--text-muted");
    const grid = cssVar("--border");
    const bars = layout.bars;
    return {
      animation: false,
      tooltip: {
        formatter: (p: { value: [number, number, number, string, string] }) =>
          `${p.value[3]}<br/>${new Date(p.value[1]).toLocaleString()} → ${new Date(p.value[2]).toLocaleString()}<br/>${p.value[4]}`,
      },
      grid: { left: 90, right: 16, top: 8, bottom: 28 },
      xAxis: { type: "time", min: layout.from, max: layout.to, axisLabel: { color: text }, splitLine: { show: true, lineStyle: { color: grid } } },
      yAxis: { type: "category", data: layout.lanes, inverse: true, axisLabel: { color: text }, axisLine: { lineStyle: { color: grid } } },
      series: [
        {
          type: "custom",
          encode: { x: [1, 2], y: 0 },
          data: layout.bars.map((b) => ({ value: [b.lane, b.start, b.end, b.member, b.laneName], itemStyle: { color: PALETTE[b.color % PALETTE.length] } })),
          renderItem: (params: unknown, api: { value: (i: number) => number; coord: (p: number[]) => number[]; size: (p: number[]) => number[]; style: (o?: object) => object }) => {
            const lane = api.value(0);
            const start = api.coord([api.value(1), lane]);
            const end = api.coord([api.value(2), lane]);
            const h = api.size([0, 1])[1] * 0.7;
            const width = Math.max(1, end[0] - start[0]);
            return {
              type: "group",
              children: [
                { type: "rect", shape: { x: start[0], y: start[1] - h / 2, width, height: h, r: 3 }, style: api.style() },
                {
                  type: "text",
                  style: { text: width > 40 ? bars[(params as { dataIndex: number }).dataIndex]?.member ?? "" : "", x: start[0] + 4, y: start[1], verticalAlign: "middle", fill: "#fff", font: "11px system-ui" },
                  silent: true,
                },
              ],
            };
          },
        },
        {
          type: "line",
          data: [],
          markLine: { symbol: "none", silent: true, lineStyle: { color: cssVar("--bad"), type: "dashed" }, label: { formatter: "now", color: cssVar("--bad") }, data: [{ xAxis: Date.now() }] },
        },
      ],
    };
  }, [layout, theme]);
  const holes = layout ? gaps(layout) : [];
  return (
    <section className="card" data-testid="schedule">
      <div className="page-head">
        <h2>{schedule.name}</h2>
        <span className="muted">{schedule.time_zone}</span>
        <span className="spacer" />
        <span data-testid="oncall-now">
          {now.data ? now.data.member ? <>On call now: <strong>{now.data.member.name}</strong>{now.data.until && <> until <Time value={now.data.until} /></>}</> : <span className="bad">Nobody is on call now</span> : "…"}
        </span>
      </div>
      {tl.isPending ? <Loading /> : tl.isError ? <Failure error={tl.error} retry={() => tl.refetch()} /> : (
        <>
          <EChart option={option!} height={60 + 34 * layout!.lanes.length} testId="oncall-timeline" label="On-call timeline, 14 days" probe={{ lanes: layout!.lanes, bars: layout!.bars.length, gaps: holes.length }} />
          {holes.length > 0 && <p className="warn">Nobody is on call for {holes.length} period(s) in the next 14 days, from <Time value={new Date(holes[0][0]).toISOString()} />.</p>}
        </>
      )}
      <div className="grid2">
        <div>
          <h3>Layers</h3>
          <ul className="events">
            {schedule.layers.map((l) => <li key={l.name}><strong>{l.name}</strong>: {l.rotation}, handoff {l.handoff}; {l.members.map((m) => m.name).join(" → ")}</li>)}
          </ul>
        </div>
        <div>
          <h3>Overrides</h3>
          {schedule.overrides.length === 0 ? <p className="muted">None.</p> : (
            <ul className="events">{schedule.overrides.map((o) => <li key={o.id}>{o.member.name}: <Time value={o.start} /> → <Time value={o.end} /></li>)}</ul>
          )}
          {canWrite && (
            <form className="form-row" aria-label="Add override" onSubmit={(e) => { e.preventDefault(); addOverride.mutate(); }}>
              <input required aria-label="Override member" placeholder="who" value={ov.member} onChange={(e) => setOv({ ...ov, member: e.target.value })} />
              <input required aria-label="Override start" type="datetime-local" value={ov.start} onChange={(e) => setOv({ ...ov, start: e.target.value })} />
              <input required aria-label="Override end" type="datetime-local" value={ov.end} onChange={(e) => setOv({ ...ov, end: e.target.value })} />
              <button className="btn small">Add override</button>
            </form>
          )}
          {addOverride.isError && <ErrorBox error={addOverride.error} />}
        </div>
      </div>
    </section>
  );
}
