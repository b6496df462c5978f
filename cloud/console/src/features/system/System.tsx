// The system page (operators): service health (the pipeline, each background worker's last run),
// capacity (database size, telemetry per day, partitions or chunks, oldest data, pools) and the
// platform's own figures over time. Every request is audited.
import { useMemo, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { EChart, cssVar } from "../../components/EChart";
import { ago, bytes, ErrorBox, Loading, Time } from "../../components/ui";
import { PlatformCharts, RangePicker, TopologyStrip, type ChartSpec } from "./Platform";
import type { Range, SystemOverview } from "./model";

const CHARTS: ChartSpec[] = [
  { title: "Ingest latency p95 (queue to commit)", name: "ingest_latency_p95_seconds", unit: "s", testId: "chart-ingest-latency" },
  { title: "Rules evaluation lag", name: "evaluation_lag_seconds", unit: "s", testId: "chart-eval-lag" },
  { title: "Writer queue", name: "writer_queue_rows", unit: "rows", testId: "chart-writer-queue" },
  { title: "HTTP requests per route group", name: "http_requests_per_second", label: "group", unit: "req/s", testId: "chart-http-rate" },
  { title: "HTTP 5xx per route group", name: "http_errors_per_second", label: "group", unit: "err/s", testId: "chart-http-errors" },
  { title: "HTTP latency p95 per route group", name: "http_latency_p95_seconds", label: "group", unit: "s", testId: "chart-http-latency" },
  { title: "Database pool in use", name: "db_pool_in_use", label: "pool", unit: "conns", testId: "chart-db-pool" },
  { title: "Gateway backlog age", name: "gateway_backlog_age_seconds", label: "name", unit: "s", testId: "chart-gateway-backlog" },
];

export function SystemPage() {
  const { theme } = useAccess();
  const [range, setRange] = useState<Range>("1h");
  const q = useQuery({ queryKey: ["system"], queryFn: () => api<SystemOverview>("/api/v1/operator/system"), refetchInterval: 30_000 });
  const perDay = useMemo(() => {
    if (!q.data) return null;
    const text = cssVar("--text-muted");
    return {
      animation: false,
      tooltip: { trigger: "axis" },
      grid: { left: 64, right: 12, top: 12, bottom: 28 },
      xAxis: { type: "category", data: q.data.telemetry_rows_per_day.map(([d]) => d), axisLabel: { color: text } },
      yAxis: { type: "value", axisLabel: { color: text }, splitLine: { lineStyle: { color: cssVar("--border") } } },
      series: [{ type: "bar", data: q.data.telemetry_rows_per_day.map(([, n]) => n), itemStyle: { color: cssVar("--accent") } }],
    };
  }, [q.data, theme]); // eslint-disable-line react-hooks/exhaustive-deps
  return (
    <div data-testid="system">
      <div className="page-head">
        <h1>System</h1>
        <span className="muted small">Pulse itself: pipeline, workers, capacity. Every view is written to the audit log.</span>
      </div>
      <TopologyStrip />
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : (
        <>
          <div className="kpis" data-testid="capacity">
            <div className="kpi"><span className="kpi-value">{bytes(q.data.database_bytes)}</span><span className="kpi-label">database</span></div>
            <div className="kpi"><span className="kpi-value">{bytes(q.data.telemetry_bytes)}</span><span className="kpi-label">telemetry ({q.data.storage_engine})</span></div>
            <div className="kpi"><span className="kpi-value">{q.data.partitions.length}</span><span className="kpi-label">{q.data.storage_engine === "timescaledb" ? "chunks" : "partitions"}</span></div>
            <div className="kpi"><span className="kpi-value">{q.data.oldest_data ? ago(q.data.oldest_data) : "—"}</span><span className="kpi-label">oldest data (kept {q.data.retention_days} d)</span></div>
            <div className="kpi"><span className="kpi-value">{bytes(q.data.system_metrics_bytes)}</span><span className="kpi-label">platform samples (kept {q.data.system_metrics_retention_days} d)</span></div>
            <div className="kpi"><span className="kpi-value">{q.data.writer_queue_rows}</span><span className="kpi-label">writer queue rows</span></div>
            {Object.entries(q.data.db_pools).map(([name, p]) => (
              <div className="kpi" key={name}><span className="kpi-value">{p.in_use}/{p.max}</span><span className="kpi-label">{name} pool in use</span></div>
            ))}
          </div>
          <div className="chart-grid">
            <section className="card">
              <h2>Workers</h2>
              <table className="table dense" data-testid="workers">
                <thead><tr><th>Worker</th><th>State</th><th>Last run</th><th>Schedule</th></tr></thead>
                <tbody>
                  {q.data.workers.map((w) => (
                    <tr key={w.name}>
                      <td>{w.name}</td>
                      <td className={w.running ? "cell-ok" : "cell-warn"}>{w.running ? "running" : "stopped"}</td>
                      <td>{w.last_run_at ? <Time value={w.last_run_at} /> : <span className="muted">not yet</span>}</td>
                      <td className="muted">{w.detail}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </section>
            <section className="card">
              <h2>Telemetry per day (estimated rows)</h2>
              {q.data.telemetry_rows_per_day.length === 0 ? (
                <p className="muted small">No daily partitions or chunks hold rows yet.</p>
              ) : (
                <EChart option={perDay!} height={180} label="Telemetry rows per day" testId="chart-telemetry-per-day" probe={q.data.telemetry_rows_per_day} />
              )}
            </section>
          </div>
          <details className="card">
            <summary>{q.data.partitions.length} {q.data.storage_engine === "timescaledb" ? "chunks" : "partitions"} of telemetry</summary>
            <table className="table dense" data-testid="partitions">
              <thead><tr><th>Name</th><th>From</th><th>To</th><th className="num">Size</th><th className="num">Rows (est.)</th></tr></thead>
              <tbody>
                {q.data.partitions.map((p) => (
                  <tr key={p.name}>
                    <td><code>{p.name}</code></td>
                    <td>{p.range_start ? p.range_start.slice(0, 10) : "default"}</td>
                    <td>{p.range_end ? p.range_end.slice(0, 10) : ""}</td>
                    <td className="num">{bytes(p.bytes)}</td>
                    <td className="num">{p.rows_estimate}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </details>
        </>
      )}
      <div className="page-head">
        <h2>Platform figures</h2>
        <span className="spacer" />
        <RangePicker range={range} onChange={setRange} />
      </div>
      <PlatformCharts specs={CHARTS} range={range} />
    </div>
  );
}
