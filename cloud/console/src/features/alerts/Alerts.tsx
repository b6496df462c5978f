// Alerts inbox: severity tabs with counts, filters in the URL (state, device, site, rule), server
// paging by cursor, ack / close / silence one or many, and the explanation of why each fired.
import { Fragment, useMemo, useState } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError, apiPage } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import { usePaging } from "../../paging";
import { navigate, useLocation } from "../../router";
import { SEVERITIES, type Alert, type AlertDetail, type Rule } from "../../types";
import { ago, Empty, ErrorBox, Loading, Pager, SeverityBadge, Time, until } from "../../components/ui";
import { useSites } from "../sites/useSites";
import { NotFound } from "../../components/NotFound";

const STATES = [
  ["open", "Open"],
  ["acknowledged", "Acknowledged"],
  ["closed", "Closed"],
  ["", "All"],
] as const;
const SILENCE = [
  ["1", "1 hour"],
  ["4", "4 hours"],
  ["24", "1 day"],
  ["168", "1 week"],
] as const;

export function AlertsPage() {
  const { query } = useLocation();
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const f = {
    state: query.has("state") ? query.get("state")! : "open",
    severity: query.get("severity") ?? "",
    device: query.get("device") ?? "",
    site: query.get("site") ?? "",
    rule: query.get("rule") ?? "",
  };
  const paging = usePaging(f);
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (name === "state" || value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate("/alerts" + (s ? "?" + s : ""), { replace: true });
  };
  const common = { state: f.state ? [f.state] : undefined, device_id: f.device || undefined, site_id: f.site || undefined, rule_id: f.rule || undefined };
  const counts = useQuery({
    queryKey: ["alert-counts", common],
    queryFn: () => api<Record<string, number>>("/api/v1/alerts/counts", { query: common }),
    refetchInterval: 15_000,
  });
  const page = useQuery({
    queryKey: ["alerts", f, paging.cursor],
    queryFn: () => apiPage<Alert>("/api/v1/alerts", { query: { ...common, severity: f.severity || undefined, limit: 50, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
    refetchInterval: 15_000,
  });
  const sites = useSites();
  const rules = useQuery({ queryKey: ["rules"], queryFn: () => api<Rule[]>("/api/v1/rules") });
  const siteName = useMemo(() => new Map((sites.data ?? []).map((s) => [s.id, s.name])), [sites.data]);
  const [selected, setSelected] = useState<Set<number>>(new Set());
  const [open, setOpen] = useState<number | null>(null);
  const [silenceHours, setSilenceHours] = useState("4");
  const items = page.data?.items ?? [];
  const visible = new Set(items.map((a) => a.id));
  const chosen = [...selected].filter((id) => visible.has(id));

  const act = useMutation({
    mutationFn: ({ ids, action }: { ids: number[]; action: "ack" | "close" | "silence" }) =>
      api<Alert[]>("/api/v1/alerts/bulk", {
        method: "POST",
        body: { ids, action, ...(action === "silence" ? { until: new Date(Date.now() + Number(silenceHours) * 3_600_000).toISOString() } : {}) },
      }),
    onSuccess: () => {
      setSelected(new Set());
      client.invalidateQueries({ queryKey: ["alerts"] });
      client.invalidateQueries({ queryKey: ["alert-counts"] });
      client.invalidateQueries({ queryKey: ["alert"] });
    },
  });
  const total = counts.data ? Object.values(counts.data).reduce((a, b) => a + b, 0) : null;
  const filtered = f.device || f.site || f.rule || f.severity;

  return (
    <>
      <div className="page-head">
        <h1>Alerts</h1>
        <div className="segmented" role="group" aria-label="State">
          {STATES.map(([v, label]) => (
            <button key={label} className={f.state === v ? "on" : ""} onClick={() => set("state", v)}>
              {label}
            </button>
          ))}
        </div>
      </div>
      <div className="tabs" role="tablist" aria-label="Severity">
        <button role="tab" aria-selected={!f.severity} className={!f.severity ? "on" : ""} onClick={() => set("severity", "")}>
          All {total !== null && <span className="count">{total}</span>}
        </button>
        {SEVERITIES.map((s) => (
          <button key={s} role="tab" aria-selected={f.severity === s} className={`sevtab-${s} ${f.severity === s ? "on" : ""}`} onClick={() => set("severity", s)}>
            {s} {counts.data && <span className="count" data-testid={`count-${s}`}>{counts.data[s]}</span>}
          </button>
        ))}
      </div>
      <div className="filters" role="search">
        <input aria-label="Device" placeholder="Device id" defaultValue={f.device} onKeyDown={(e) => e.key === "Enter" && set("device", e.currentTarget.value.trim())} onBlur={(e) => set("device", e.currentTarget.value.trim())} />
        <select aria-label="Site" value={f.site} onChange={(e) => set("site", e.target.value)}>
          <option value="">All sites</option>
          {(sites.data ?? []).map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}
        </select>
        <select aria-label="Rule" value={f.rule} onChange={(e) => set("rule", e.target.value)}>
          <option value="">All rules</option>
          <option value="GATEWAY_OFFLINE">GATEWAY_OFFLINE</option>
          {(rules.data ?? []).map((r) => <option key={r.id} value={r.id}>{r.name || r.id}</option>)}
        </select>
        {filtered && (
          <button className="btn small" onClick={() => navigate("/alerts" + (f.state !== "open" ? `?state=${f.state}` : ""), { replace: true })}>
            Clear filters
          </button>
        )}
        <span className="spacer" />
        {canWrite && (
          <div className="row bulk" aria-label="Bulk actions">
            <span className="muted">{chosen.length} selected</span>
            <button className="btn small" disabled={!chosen.length || act.isPending} onClick={() => act.mutate({ ids: chosen, action: "ack" })}>Acknowledge</button>
            <button className="btn small" disabled={!chosen.length || act.isPending} onClick={() => act.mutate({ ids: chosen, action: "close" })}>Close</button>
            <select aria-label="Silence for" value={silenceHours} onChange={(e) => setSilenceHours(e.target.value)}>
              {SILENCE.map(([h, label]) => <option key={h} value={h}>{label}</option>)}
            </select>
            <button className="btn small" disabled={!chosen.length || act.isPending} onClick={() => act.mutate({ ids: chosen, action: "silence" })}>Silence</button>
          </div>
        )}
      </div>
      {act.isError && <ErrorBox error={act.error} />}
      {page.isPending ? (
        <Loading what="Loading alerts" />
      ) : page.isError ? (
        <ErrorBox error={page.error} retry={() => page.refetch()} />
      ) : items.length === 0 ? (
        <Empty title={filtered || f.state !== "open" ? "No alerts match these filters." : "No open alerts."}>
          {!filtered && f.state === "open" ? "All quiet. Rules open alerts here when a condition holds." : null}
        </Empty>
      ) : (
        <>
          <table className="table dense" data-testid="alerts-table" aria-busy={page.isFetching}>
            <thead>
              <tr>
                {canWrite && (
                  <th>
                    <input
                      type="checkbox"
                      aria-label="Select all on this page"
                      checked={chosen.length > 0 && chosen.length === items.length}
                      onChange={(e) => setSelected(e.target.checked ? new Set(items.map((a) => a.id)) : new Set())}
                    />
                  </th>
                )}
                <th>Severity</th><th>Device</th><th>Rule</th><th>Why</th><th>Site</th><th>State</th><th>Opened</th>{canWrite && <th />}
              </tr>
            </thead>
            <tbody>
              {items.map((a) => (
                <Fragment key={a.id}>
                  <tr data-alert-id={a.id} className={open === a.id ? "expanded" : ""}>
                    {canWrite && (
                      <td>
                        <input
                          type="checkbox"
                          aria-label={`Select alert ${a.id}`}
                          checked={selected.has(a.id)}
                          onChange={(e) => {
                            const next = new Set(selected);
                            if (e.target.checked) next.add(a.id);
                            else next.delete(a.id);
                            setSelected(next);
                          }}
                        />
                      </td>
                    )}
                    <td><SeverityBadge severity={a.severity} /></td>
                    <td><code>{a.device_id}</code></td>
                    <td><code>{a.rule_id}</code>{a.source === "edge" && <span className="tag">edge</span>}</td>
                    <td className="why">
                      <button className="linkish" aria-expanded={open === a.id} onClick={() => setOpen(open === a.id ? null : a.id)}>
                        {a.explanation.text}
                      </button>
                      {a.flapping && <span className="tag">flapping</span>}
                      {a.occurrences > 1 && <span className="tag">×{a.occurrences}</span>}
                    </td>
                    <td>{a.site_id ? siteName.get(a.site_id) ?? "…" : <span className="muted">—</span>}</td>
                    <td>
                      <span className={`badge badge-alert-${a.state}`}>{a.state}</span>
                      {a.silenced_until && new Date(a.silenced_until) > new Date() && <span className="tag" title={`until ${a.silenced_until}`}>silenced</span>}
                    </td>
                    <td title={a.opened_at}><Link to={`/alerts/${a.id}`}>{ago(a.opened_at)}</Link></td>
                    {canWrite && (
                      <td className="actions">
                        {a.state === "open" && <button className="btn small" onClick={() => act.mutate({ ids: [a.id], action: "ack" })}>Ack</button>}
                        {a.state !== "closed" && <button className="btn small" onClick={() => act.mutate({ ids: [a.id], action: "close" })}>Close</button>}
                        {a.state !== "closed" && <button className="btn small" onClick={() => act.mutate({ ids: [a.id], action: "silence" })}>Silence</button>}
                      </td>
                    )}
                  </tr>
                  {open === a.id && (
                    <tr className="detail-row">
                      <td colSpan={canWrite ? 9 : 7}>
                        <AlertDetailView id={a.id} />
                      </td>
                    </tr>
                  )}
                </Fragment>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={items.length} what="alerts" hasNext={!!page.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(page.data!.next_cursor)} />
        </>
      )}
    </>
  );
}

const fmtValue = (v: unknown) => (v === null || v === undefined ? "—" : typeof v === "number" ? String(Number(v.toPrecision(6))) : String(v));
const msTime = (ms: number | null | undefined) => (ms ? new Date(ms).toISOString() : null);

export function AlertDetailView({ id }: { id: number }) {
  const q = useQuery({ queryKey: ["alert", id], queryFn: () => api<AlertDetail>(`/api/v1/alerts/${id}`) });
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const a = q.data;
  const e = a.explanation;
  const facts: [string, React.ReactNode][] = [];
  if (e.metric) facts.push(["Condition", <code key="c">{e.metric} {e.operator} {fmtValue(e.threshold)}</code>]);
  if (e.clear_threshold !== undefined && e.clear_threshold !== null) facts.push(["Clears at", fmtValue(e.clear_threshold)]);
  if (e.window_s) facts.push(["Held for", `${e.window_s}s window`]);
  if (e.since_ms) facts.push(["Holding since", <Time key="s" value={msTime(e.since_ms)} />]);
  if (e.readings) facts.push(["Readings while it held", String(e.readings)]);
  if (e.first !== undefined && e.first !== null) facts.push(["First / last value", `${fmtValue(e.first)} → ${fmtValue(e.last)}`]);
  if (e.low !== undefined && e.low !== null) facts.push(["Range", `${fmtValue(e.low)} … ${fmtValue(e.high)}`]);
  if (e.status) facts.push(["Device status", e.status]);
  if (e.last_seen_ms) facts.push(["Last seen", <Time key="l" value={msTime(e.last_seen_ms)} />]);
  return (
    <div className="alert-detail" data-testid="alert-detail">
      <div className="grid2">
        <section>
          <h3>Why it fired</h3>
          <p className="explanation">{e.text}</p>
          <dl className="props">
            {facts.map(([k, v]) => (
              <div key={k} className="contents"><dt>{k}</dt><dd>{v}</dd></div>
            ))}
            <dt>Rule</dt><dd><Link to={`/rules?edit=${encodeURIComponent(a.rule_id)}`}><code>{a.rule_id}</code></Link> v{a.rule_version ?? "—"} · {a.source}</dd>
            <dt>Device</dt><dd><code>{a.device_id}</code></dd>
            {a.acknowledged_by && (<><dt>Acknowledged</dt><dd>{a.acknowledged_by}, <Time value={a.acknowledged_at} /></dd></>)}
            {a.closed_by && (<><dt>Closed</dt><dd>{a.closed_by}, <Time value={a.closed_at} /></dd></>)}
            {a.escalation && (<><dt>Escalation</dt><dd>level {a.escalation.level}{a.escalation.stopped ? " (stopped)" : a.escalation.next_at ? `, next level ${until(a.escalation.next_at)}` : ""}</dd></>)}
          </dl>
        </section>
        <section>
          <h3>History</h3>
          <ol className="events">
            {a.events.map((ev, i) => (
              <li key={i}>
                <Time value={ev.at} /> <strong>{ev.kind}</strong> <span className="muted">by {ev.actor}</span>
                {typeof ev.detail.note === "string" && ev.detail.note && <span> — {ev.detail.note}</span>}
              </li>
            ))}
          </ol>
          {a.notifications && a.notifications.length > 0 && (
            <>
              <h3>Notifications</h3>
              <ul className="events">
                {a.notifications.map((n) => (
                  <li key={n.id}>{n.channel_name} ({n.kind}): <span className={`badge badge-delivery-${n.status}`}>{n.status}</span> {n.event}</li>
                ))}
              </ul>
            </>
          )}
        </section>
      </div>
    </div>
  );
}

type Permission = { permission: "alerts.ack" | "alerts.close"; roles: string[] };

/** Whether the signed-in account may acknowledge / close alerts: the tenant's permissions (GET /api/v1/permissions). */
function useAlertPermissions(): { canAck: boolean; canClose: boolean } {
  const { me, tenant } = useAccess();
  const q = useQuery({ queryKey: ["permissions"], queryFn: () => api<Permission[]>("/api/v1/permissions"), enabled: tenant });
  const holds = (name: Permission["permission"]) => (q.data ?? []).some((p) => p.permission === name && p.roles.some((r) => me.roles.includes(r)));
  return { canAck: holds("alerts.ack"), canClose: holds("alerts.close") };
}

/** One alert on its own page: where notifications link to (/app/alerts/<id>). */
export function AlertPage({ id }: { id: string }) {
  const { canWrite } = useAccess();
  const { canAck, canClose } = useAlertPermissions();
  const client = useQueryClient();
  const n = Number(id);
  const q = useQuery({ queryKey: ["alert", n], queryFn: () => api<AlertDetail>(`/api/v1/alerts/${n}`), enabled: Number.isInteger(n) });
  const act = useMutation({
    mutationFn: (action: "ack" | "close" | "silence") =>
      api<Alert>(`/api/v1/alerts/${n}/${action}`, { method: "POST", body: action === "silence" ? { until: new Date(Date.now() + 4 * 3_600_000).toISOString() } : {} }),
    onSuccess: () => {
      client.invalidateQueries({ queryKey: ["alert", n] });
      client.invalidateQueries({ queryKey: ["alerts"] });
      client.invalidateQueries({ queryKey: ["alert-counts"] });
    },
  });
  if (!Number.isInteger(n) || (q.isError && q.error instanceof ApiError && q.error.status === 404)) return <NotFound what="alert" />;
  if (q.isPending) return <Loading what="Loading alert" />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const a = q.data;
  return (
    <>
      <div className="page-head">
        <h1>Alert {a.id}</h1>
        <SeverityBadge severity={a.severity} />
        <span className={`badge badge-alert-${a.state}`} data-testid="alert-state">{a.state}</span>
        <span className="muted">opened {ago(a.opened_at)}</span>
        <span className="spacer" />
        {canAck && a.state === "open" && <button className="btn" onClick={() => act.mutate("ack")}>Acknowledge</button>}
        {canWrite && a.state !== "closed" && <button className="btn" onClick={() => act.mutate("silence")}>Silence 4 hours</button>}
        {canClose && a.state !== "closed" && <button className="btn" onClick={() => act.mutate("close")}>Close</button>}
        <Link to="/alerts">all alerts →</Link>
      </div>
      {act.isError && <ErrorBox error={act.error} />}
      <section className="card">
        <AlertDetailView id={n} />
      </section>
    </>
  );
}
