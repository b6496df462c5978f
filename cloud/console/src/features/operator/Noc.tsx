// The NOC view (operators): gauges, the pipeline strip, charts of the last hour or day from the
// platform samples, the alert heatmap, the live event feed (with pause), TV mode. Every request is audited.
import { useEffect, useMemo, useRef, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { live, useLiveState } from "../../live";
import { niceMax, poolPct, pushEvents } from "../../noc";
import { SEVERITIES, type FeedEvent, type Noc, type TenantHealth } from "../../types";
import { EChart, cssVar } from "../../components/EChart";
import { Empty, ErrorBox, Loading } from "../../components/ui";
import { AlertHeatmap, PlatformCharts, RangePicker, TopologyStrip, type ChartSpec } from "../system/Platform";
import type { Range } from "../system/model";

const NOC_CHARTS: ChartSpec[] = [
  { title: "Messages per second", name: "ingest_rows_per_second", unit: "rows/s", testId: "chart-messages" },
  { title: "Alert rate (opened per minute)", name: "alerts_opened", unit: "/min", testId: "chart-alert-rate" },
  { title: "Device states", name: "devices", label: "state", stacked: true, unit: "devices", testId: "chart-device-states" },
  { title: "Delivery queue", name: "notify_queue_depth", unit: "jobs", testId: "chart-delivery-queue" },
];

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
  const [paused, setPaused] = useState(false);
  const [held, setHeld] = useState(0); // events received while paused (the list stays as it was)
  const pausedRef = useRef(false);
  pausedRef.current = paused;
  const [range, setRange] = useState<Range>("1h");
  const liveState = useLiveState();
  useEffect(
    () =>
      live.feed((evs) => {
        setReceived((n) => n + evs.length);
        if (pausedRef.current) setHeld((n) => n + evs.length);
        else setEvents((list) => pushEvents(list, evs));
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
      <TopologyStrip />
      <div className="page-head">
        <h2>Trends</h2>
        <span className="spacer" />
        <RangePicker range={range} onChange={setRange} />
      </div>
      <PlatformCharts specs={NOC_CHARTS} range={range} />
      <section className="card">
        <h2>Alerts by day and hour (UTC, last 7 days)</h2>
        <AlertHeatmap days={7} />
      </section>
      <section className="card">
        <div className="page-head">
          <h2>Live events</h2>
          <span className="muted small" data-testid="feed-count">{received} received{paused ? `, ${held} held while paused` : ""}</span>
          <span className="spacer" />
          <button
            className="btn small"
            aria-pressed={paused}
            data-testid="feed-pause"
            onClick={() => {
              setPaused((p) => !p);
              setHeld(0);
            }}
          >
            {paused ? "Resume" : "Pause"}
          </button>
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
