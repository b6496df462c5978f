// Operator pages (accounts without a tenant): the NOC view (gauges, live event feed, TV mode),
// the tenant health matrix, and every tenant's devices and alerts. Every request is audited.
import { useEffect, useMemo, useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api } from "../api";
import { useAccess } from "../App";
import { live, useLiveState } from "../live";
import { niceMax, poolPct, pushEvents } from "../noc";
import { usePaging, type Page } from "../paging";
import { navigate, useLocation } from "../router";
import { SEVERITIES, type FeedEvent, type Noc, type OperatorAlert, type OperatorDevice, type TenantHealth } from "../types";
import { EChart, cssVar } from "../components/EChart";
import { ago, Empty, ErrorBox, Loading, Pager, SeverityBadge } from "../components/ui";

function gauge(name: string, value: number | null, max: number, unit: string, color: string, text: string) {
  return {
    animation: false,
    series: [
      {
        type: "gauge",
        min: 0,
        max,
        radius: "92%",
        progress: { show: true, width: 14, itemStyle: { color } },
        axisLine: { lineStyle: { width: 14, color: [[1, cssVar("--border")]] } },
        axisTick: { show: false },
        splitLine: { length: 8, lineStyle: { color: text, width: 1 } },
        axisLabel: { color: text, distance: 18, fontSize: 10 },
        pointer: { show: false },
        anchor: { show: false },
        title: { offsetCenter: [0, "72%"], color: text, fontSize: 13 },
        detail: { valueAnimation: false, offsetCenter: [0, "20%"], fontSize: 24, color: cssVar("--text"), formatter: value === null ? "—" : `{value}${unit}` },
        data: [{ value: value ?? 0, name }],
      },
    ],
  };
}

export function NocPage() {
  const { theme } = useAccess();
  const q = useQuery({ queryKey: ["noc"], queryFn: () => api<Noc>("/api/v1/operator/noc"), refetchInterval: 10_000 });
  const health = useQuery({ queryKey: ["tenant-health"], queryFn: () => api<TenantHealth[]>("/api/v1/operator/health"), staleTime: 60_000 });
  const slug = useMemo(() => new Map((health.data ?? []).map((t) => [t.id, t.slug])), [health.data]);
  const [events, setEvents] = useState<FeedEvent[]>([]);
  const [received, setReceived] = useState(0);
  const liveState = useLiveState();
  useEffect(
    () =>
      live.feed((evs) => {
        setEvents((list) => pushEvents(list, evs));
        setReceived((n) => n + evs.length);
      }),
    [],
  );
  const [tv, setTv] = useState(false);
  const [applied, setApplied] = useState(0); // bumps after TV mode changed the page's colours
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement || e.metaKey || e.ctrlKey || e.altKey) return;
      if (e.key === "t" || e.key === "T") setTv((v) => !v);
      if (e.key === "Escape") setTv(false);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  useEffect(() => {
    if (!tv) return;
    const root = document.documentElement;
    const before = root.dataset.theme;
    root.dataset.theme = "dark";
    document.body.classList.add("tv");
    root.requestFullscreen?.().catch(() => {}); // refused without a user gesture (e.g. in tests): TV mode still applies
    setApplied((n) => n + 1);
    return () => {
      root.dataset.theme = before;
      setApplied((n) => n + 1);
      document.body.classList.remove("tv");
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    };
  }, [tv]);
  const options = useMemo(() => {
    if (!q.data) return null;
    const n = q.data;
    const text = cssVar("--text-muted");
    const openAlerts = SEVERITIES.reduce((a, s) => a + n.open_alerts[s], 0);
    // the fullest of the pools that serve tenants and ingest (the operator pool holds this very request)
    const busiest = Math.max(0, ...Object.entries(n.db_pools).filter(([name]) => name !== "operator").map(([, p]) => poolPct(p)));
    return {
      online: gauge("fleet online", n.online_pct, 100, "%", cssVar("--ok"), text),
      ingest: gauge("ingest rows/s", n.ingest_rows_per_s, niceMax(n.ingest_rows_per_s), "", cssVar("--accent"), text),
      alerts: gauge("open alerts", openAlerts, niceMax(openAlerts), "", openAlerts > 0 ? cssVar("--bad") : cssVar("--ok"), text),
      pool: gauge("DB pool in use", busiest, 100, "%", busiest > 80 ? cssVar("--bad") : cssVar("--warn"), text),
    };
  }, [q.data, theme, applied]); // eslint-disable-line react-hooks/exhaustive-deps
  return (
    <div className={tv ? "noc tv-mode" : "noc"} data-testid="noc">
      <div className="page-head">
        <h1>NOC</h1>
        <span className="muted small">press <kbd>T</kbd> for TV mode (fullscreen, dark), <kbd>Esc</kbd> to leave</span>
        <span className="spacer" />
        <span className={`live live-${liveState}`} data-testid="live-state">{liveState === "live" ? "● live" : liveState}</span>
        <button className="btn small" onClick={() => setTv((v) => !v)} aria-pressed={tv}>{tv ? "Leave TV mode" : "TV mode"}</button>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : (
        <>
          <div className="gauges" data-testid="noc-gauges">
            <EChart option={options!.online} height={200} label="Fleet online percent" testId="gauge-online" probe={q.data.online_pct} />
            <EChart option={options!.ingest} height={200} label="Ingest rate" testId="gauge-ingest" probe={q.data.ingest_rows_per_s} />
            <EChart option={options!.alerts} height={200} label="Open alerts" testId="gauge-alerts" probe={q.data.open_alerts} />
            <EChart option={options!.pool} height={200} label="Database pool use" testId="gauge-pool" probe={q.data.db_pools} />
          </div>
          <div className="kpis">
            <div className="kpi"><span className="kpi-value">{q.data.tenants}</span><span className="kpi-label">tenants</span></div>
            <div className="kpi"><span className="kpi-value">{q.data.devices}</span><span className="kpi-label">devices</span></div>
            {(["online", "stale", "offline", "unreachable"] as const).map((s) => (
              <div key={s} className={`kpi kpi-state-${s}`}><span className="kpi-value">{q.data.devices_by_state[s]}</span><span className="kpi-label">{s}</span></div>
            ))}
            <div className="kpi"><span className="kpi-value">{q.data.gateways.online}/{q.data.gateways.online + q.data.gateways.offline}</span><span className="kpi-label">gateways online</span></div>
            {SEVERITIES.map((s) => (
              <div key={s} className={`kpi kpi-sev-${s}`}><span className="kpi-value">{q.data.open_alerts[s]}</span><span className="kpi-label">{s}</span></div>
            ))}
          </div>
        </>
      )}
      <section className="card">
        <div className="page-head">
          <h2>Live events</h2>
          <span className="muted small" data-testid="feed-count">{received} received</span>
        </div>
        {events.length === 0 ? (
          <Empty title="Waiting for events.">Each stored batch of readings shows here as it arrives, from every tenant.</Empty>
        ) : (
          <table className="table dense" data-testid="event-feed">
            <tbody>
              {events.map((e, i) => (
                <tr key={`${e.t}-${e.device_id}-${i}`}>
                  <td className="muted">{new Date(e.t).toLocaleTimeString()}</td>
                  <td><code>{slug.get(e.tenant_id) ?? e.tenant_id.slice(0, 8)}</code></td>
                  <td><code>{e.device_id}</code></td>
                  <td className="muted">{e.readings} reading{e.readings === 1 ? "" : "s"}</td>
                  <td>{Object.entries(e.metrics).slice(0, 4).map(([k, v]) => `${k}=${v}`).join("  ")}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </div>
  );
}

function cell(bad: boolean, warn: boolean): string {
  return bad ? "cell-bad" : warn ? "cell-warn" : "cell-ok";
}

export function HealthPage() {
  const q = useQuery({ queryKey: ["tenant-health"], queryFn: () => api<TenantHealth[]>("/api/v1/operator/health"), refetchInterval: 30_000 });
  return (
    <>
      <h1>Tenant health</h1>
      <p className="muted note">One row per tenant; red needs attention. Every view is written to the audit log.</p>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No tenants yet." />
      ) : (
        <table className="table matrix" data-testid="health-matrix">
          <thead>
            <tr><th>Tenant</th><th className="num">Devices</th><th className="num">Online</th><th className="num">Offline</th><th className="num">Open alerts</th><th className="num">Critical</th><th className="num">Gateways offline</th><th>Last reading</th></tr>
          </thead>
          <tbody>
            {q.data.map((t) => {
              const silent = !t.last_ingest_at || Date.now() - new Date(t.last_ingest_at).getTime() > 3_600_000;
              return (
                <tr key={t.id}>
                  <td><a href={`/app/operator/devices?tenant=${t.slug}`} onClick={(e) => { e.preventDefault(); navigate(`/operator/devices?tenant=${t.slug}`); }}><code>{t.slug}</code></a> <span className="muted">{t.name}</span></td>
                  <td className="num">{t.devices}</td>
                  <td className="num">{t.online}</td>
                  <td className={`num ${cell(t.devices > 0 && t.offline / t.devices > 0.2, t.offline > 0)}`}>{t.offline}</td>
                  <td className={`num ${cell(false, t.open_alerts > 0)}`}>{t.open_alerts}</td>
                  <td className={`num ${cell(t.critical_alerts > 0, false)}`}>{t.critical_alerts}</td>
                  <td className={`num ${cell(t.gateways_offline > 0, false)}`}>{t.gateways_offline}/{t.gateways}</td>
                  <td className={t.devices > 0 ? cell(false, silent) : ""}>{ago(t.last_ingest_at)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </>
  );
}

function useFilters(path: string, names: string[]) {
  const { query } = useLocation();
  const f = Object.fromEntries(names.map((n) => [n, query.get(n) ?? ""]));
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate(path + (s ? "?" + s : ""), { replace: true });
  };
  return [f, set] as const;
}

export function OperatorDevicesPage() {
  const [f, set] = useFilters("/operator/devices", ["tenant", "q", "state"]);
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["op-devices", f, paging.cursor],
    queryFn: () => api<Page<OperatorDevice>>("/api/v1/operator/devices", { query: { ...f, limit: 100, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
  });
  return (
    <>
      <h1>All devices</h1>
      <p className="muted note">Devices of every tenant. Each page you open is written to the audit log.</p>
      <div className="filters" role="search">
        <input aria-label="Tenant" placeholder="tenant slug" defaultValue={f.tenant} onKeyDown={(e) => e.key === "Enter" && set("tenant", e.currentTarget.value.trim())} onBlur={(e) => set("tenant", e.currentTarget.value.trim())} />
        <input aria-label="Search devices" placeholder="device id or name" defaultValue={f.q} onKeyDown={(e) => e.key === "Enter" && set("q", e.currentTarget.value.trim())} onBlur={(e) => set("q", e.currentTarget.value.trim())} />
        <select aria-label="State" value={f.state} onChange={(e) => set("state", e.target.value)}>
          <option value="">any state</option>
          {["online", "stale", "offline", "unreachable"].map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title="No devices match." />
      ) : (
        <>
          <table className="table dense" data-testid="op-devices-table" aria-busy={q.isFetching}>
            <thead><tr><th>Tenant</th><th>Device</th><th>Name</th><th>Status</th><th>State</th><th>Updated</th></tr></thead>
            <tbody>
              {q.data.items.map((d) => (
                <tr key={d.id}>
                  <td><code>{d.tenant_slug}</code></td>
                  <td><code>{d.device_id}</code></td>
                  <td>{d.name}</td>
                  <td><span className={`badge badge-${d.status}`}>{d.status}</span></td>
                  <td>{d.state ? <span className={`badge badge-state-${d.state}`}>{d.state}</span> : <span className="muted">—</span>}</td>
                  <td>{ago(d.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="devices" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}

export function OperatorAlertsPage() {
  const [f, set] = useFilters("/operator/alerts", ["tenant", "state", "severity"]);
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["op-alerts", f, paging.cursor],
    queryFn: () =>
      api<Page<OperatorAlert>>("/api/v1/operator/alerts", {
        query: { tenant: f.tenant, state: f.state || undefined, severity: f.severity || undefined, limit: 100, cursor: paging.cursor },
      }),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
  });
  return (
    <>
      <h1>All alerts</h1>
      <p className="muted note">Alerts of every tenant, newest first. Each page you open is written to the audit log.</p>
      <div className="filters" role="search">
        <input aria-label="Tenant" placeholder="tenant slug" defaultValue={f.tenant} onKeyDown={(e) => e.key === "Enter" && set("tenant", e.currentTarget.value.trim())} onBlur={(e) => set("tenant", e.currentTarget.value.trim())} />
        <select aria-label="State" value={f.state} onChange={(e) => set("state", e.target.value)}>
          <option value="">any state</option>
          {["open", "acknowledged", "closed"].map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
        <select aria-label="Severity" value={f.severity} onChange={(e) => set("severity", e.target.value)}>
          <option value="">any severity</option>
          {SEVERITIES.map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title="No alerts match." />
      ) : (
        <>
          <table className="table dense" data-testid="op-alerts-table" aria-busy={q.isFetching}>
            <thead><tr><th>Tenant</th><th>Severity</th><th>Device</th><th>Rule</th><th>Why</th><th>State</th><th>Opened</th></tr></thead>
            <tbody>
              {q.data.items.map((a) => (
                <tr key={a.id}>
                  <td><code>{a.tenant_slug}</code></td>
                  <td><SeverityBadge severity={a.severity} /></td>
                  <td><code>{a.device_id}</code></td>
                  <td><code>{a.rule_id}</code></td>
                  <td>{a.explanation.text}</td>
                  <td><span className={`badge badge-alert-${a.state}`}>{a.state}</span></td>
                  <td title={a.opened_at}>{ago(a.opened_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="alerts" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}
