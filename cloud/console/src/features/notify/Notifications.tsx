// Notifications: channels (with "send test"), routing rules, the delivery log with dead letters and retry.
import { Fragment, useState } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import { usePaging, type Page } from "../../paging";
import { navigate, useLocation } from "../../router";
import { KINDS } from "./kinds";
import { SEVERITIES, type Channel, type ChannelKind, type Delivery, type Route } from "../../types";
import { ago, Empty, ErrorBox, Loading, Pager, Time } from "../../components/ui";
import { useSites } from "../sites/useSites";
import { Failure, items, usePolicies, useChannels } from "./shared";

const CONFIG_EXAMPLE: Record<ChannelKind, object> = {
  slack: { webhook_url: "https://hooks.slack.com/services/..." },
  pagerduty: { routing_key: "..." },
  teams: { webhook_url: "https://..." },
  webhook: { url: "https://example.com/pulse", secret: "..." },
  email: { to: ["oncall@example.com"] },
  snmp: { host: "192.0.2.10", port: 162, community: "public" },
  mqtt: { url: "mqtts://broker.example.com:8883", topic: "pulse/alerts" },
};

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
  const q = useQuery({ queryKey: ["routes"], queryFn: () => api<Page<Route>>("/api/v1/notify/routes", { query: { limit: 500 } }).then(items) });
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
