// Reports: the tenant's SLA summary for a period (figures and charts), exports of devices and
// alerts (streamed downloads with progress), and the report history (people's runs and the daily
// scheduled report, whose notification links here with ?run=<id>).
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { accessToken, api, queryString } from "../../api";
import { usePaging, type Page } from "../../paging";
import { navigate, useLocation } from "../../router";
import { cssVar, PALETTE, useEChart } from "../../components/EChart";
import { bytes, Empty, ErrorBox, Loading, Pager, Time } from "../../components/ui";

type Count = { name: string; alerts: number };
type Availability = { device_id: string; online_pct: number; online_s: number; known_s: number };
export type Sla = {
  from: string; to: string; devices: number; online_pct: number | null; mttr_s: number | null;
  alerts_opened: number; alerts_closed: number; alerts_by_severity: Record<string, number>;
  top_devices: Count[]; top_rules: Count[]; availability: Availability[]; run_id?: string;
};
type Run = {
  id: string; kind: string; params: Record<string, unknown>; status: string; requested_by: string;
  created_at: string; finished_at: string | null; error: string | null; result: Record<string, unknown> | null;
};

const DAY = 86_400_000;
const PERIODS = { "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY } as const;
type PeriodKey = keyof typeof PERIODS;
const SEVERITIES = ["critical", "major", "minor", "warning", "info"];

function period(key: PeriodKey, now: number): { from: string; to: string } {
  return { from: new Date(now - PERIODS[key]).toISOString(), to: new Date(now).toISOString() };
}

export function duration(s: number | null): string {
  if (s === null) return "—";
  const m = Math.round(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min` : `${m} min`;
}

/** Download a streamed API answer to a file, reporting bytes as they arrive. */
async function download(path: string, filename: string, onProgress: (n: number) => void): Promise<void> {
  const token = await accessToken();
  const r = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!r.ok || !r.body) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.message ?? `HTTP ${r.status}`);
  }
  const reader = r.body.getReader();
  const parts: BlobPart[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    n += value.length;
    onProgress(n);
  }
  const url = URL.createObjectURL(new Blob(parts, { type: r.headers.get("content-type") ?? "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.click();
  URL.revokeObjectURL(url);
}

function SlaCharts({ sla }: { sla: Sla }) {
  const [el, chart] = useEChart();
  useEffect(() => {
    const text = cssVar("--text") || "#333";
    const worst = sla.availability.slice(0, 10);
    chart.current?.setOption(
      {
        tooltip: { trigger: "axis" },
        grid: [
          { left: 110, right: "55%", top: 30, bottom: 20 },
          { left: "58%", right: 20, top: 30, bottom: 20 },
        ],
        title: undefined,
        xAxis: [
          { gridIndex: 0, type: "value", max: 100, axisLabel: { color: text, formatter: "{value} %" } },
          { gridIndex: 1, type: "category", data: SEVERITIES, axisLabel: { color: text } },
        ],
        yAxis: [
          { gridIndex: 0, type: "category", inverse: true, data: worst.map((a) => a.device_id), axisLabel: { color: text } },
          { gridIndex: 1, type: "value", minInterval: 1, axisLabel: { color: text } },
        ],
        series: [
          { name: "online %", type: "bar", xAxisIndex: 0, yAxisIndex: 0, data: worst.map((a) => a.online_pct), itemStyle: { color: PALETTE[1] } },
          {
            name: "alerts", type: "bar", xAxisIndex: 1, yAxisIndex: 1,
            data: SEVERITIES.map((s, i) => ({ value: sla.alerts_by_severity[s] ?? 0, itemStyle: { color: ["#c0262d", "#e8590c", "#a15c00", "#5c7cfa", "#0b7285"][i] } })),
          },
        ],
      },
      true,
    );
  }, [sla, chart]);
  const probe = JSON.stringify({ online: sla.online_pct, severities: sla.alerts_by_severity });
  return <div ref={el} className="chart" style={{ height: 260 }} data-testid="sla-chart" data-probe={probe} />;
}

export function SlaCard({ sla }: { sla: Sla }) {
  const top = Math.max(1, ...sla.top_devices.map((c) => c.alerts));
  return (
    <section className="card" data-testid="sla-card">
      <div className="page-head">
        <h2>SLA summary</h2>
        <span className="muted small"><Time value={sla.from} /> → <Time value={sla.to} /></span>
      </div>
      <div className="figures">
        <div className="figure"><span className="muted small">Online</span><b data-testid="sla-online">{sla.online_pct === null ? "—" : `${sla.online_pct.toFixed(2)} %`}</b><span className="muted small">{sla.devices} devices</span></div>
        <div className="figure"><span className="muted small">MTTR</span><b data-testid="sla-mttr">{duration(sla.mttr_s)}</b><span className="muted small">{sla.alerts_closed} alerts closed</span></div>
        <div className="figure"><span className="muted small">Alerts opened</span><b>{sla.alerts_opened}</b></div>
      </div>
      <p className="muted small">Least available devices (online %) · alerts opened by severity</p>
      <SlaCharts sla={sla} />
      <div className="two-col">
        <div>
          <h3>Top alerting devices</h3>
          {sla.top_devices.length === 0 ? <p className="muted">No alerts in this period.</p> : (
            <table className="table dense"><tbody>
              {sla.top_devices.map((c) => (
                <tr key={c.name}><td>{c.name}</td><td style={{ width: "50%" }}><span className="bar" style={{ display: "inline-block", height: 8, background: PALETTE[0], width: `${(100 * c.alerts) / top}%` }} /></td><td>{c.alerts}</td></tr>
              ))}
            </tbody></table>
          )}
        </div>
        <div>
          <h3>Top alerting rules</h3>
          {sla.top_rules.length === 0 ? <p className="muted">No alerts in this period.</p> : (
            <table className="table dense"><tbody>
              {sla.top_rules.map((c) => <tr key={c.name}><td><code>{c.name}</code></td><td>{c.alerts}</td></tr>)}
            </tbody></table>
          )}
        </div>
      </div>
    </section>
  );
}

function Exports({ range }: { range: { from: string; to: string } }) {
  const [progress, setProgress] = useState<Record<string, string>>({});
  const [error, setError] = useState<string | null>(null);
  const start = (key: string, path: string, filename: string) => {
    setError(null);
    setProgress((p) => ({ ...p, [key]: "starting…" }));
    download(path, filename, (n) => setProgress((p) => ({ ...p, [key]: `${bytes(n)} received` })))
      .then(() => setProgress((p) => ({ ...p, [key]: "done" })))
      .catch((e: Error) => {
        setError(e.message);
        setProgress((p) => ({ ...p, [key]: "failed" }));
      });
  };
  const rows: [string, string, string][] = [
    ["devices-csv", `/api/v1/exports/devices${queryString({ format: "csv" })}`, "devices.csv"],
    ["devices-jsonl", `/api/v1/exports/devices${queryString({ format: "jsonl" })}`, "devices.jsonl"],
    ["alerts-csv", `/api/v1/exports/alerts${queryString({ ...range, format: "csv" })}`, "alerts.csv"],
    ["alerts-jsonl", `/api/v1/exports/alerts${queryString({ ...range, format: "jsonl" })}`, "alerts.jsonl"],
    ["telemetry-csv", `/api/v1/exports/telemetry${queryString({ ...range, format: "csv" })}`, "telemetry.csv"],
    ["telemetry-parquet", `/api/v1/exports/telemetry${queryString({ ...range, format: "parquet" })}`, "telemetry.parquet"],
    ["sla-csv", `/api/v1/reports/sla${queryString({ ...range, format: "csv" })}`, "sla.csv"],
  ];
  return (
    <section className="card">
      <h2>Exports</h2>
      <p className="muted small">Alerts, telemetry (one row per reading and metric) and the SLA file cover the period above; devices are the whole fleet. Large exports stream: the count shows what has arrived.</p>
      {error && <p className="error" role="alert">{error}</p>}
      <div className="buttons">
        {rows.map(([key, path, filename]) => (
          <span key={key} className="export">
            <button onClick={() => start(key, path, filename)} disabled={progress[key]?.endsWith("received") || progress[key] === "starting…"}>{filename}</button>
            {progress[key] && <span className="muted small" data-testid={`progress-${key}`}> {progress[key]}</span>}
          </span>
        ))}
      </div>
    </section>
  );
}

function History({ open }: { open: (id: string) => void }) {
  const paging = usePaging({});
  const q = useQuery({
    queryKey: ["report-runs", paging.cursor],
    queryFn: () => api<Page<Run>>("/api/v1/reports/runs", { query: { limit: 20, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
  });
  return (
    <section className="card">
      <h2>Report history</h2>
      {q.isPending ? <Loading /> : q.isError ? <ErrorBox error={q.error} retry={() => q.refetch()} /> : q.data.items.length === 0 ? (
        <Empty title="No reports yet.">Reports and exports appear here, with the daily scheduled SLA report.</Empty>
      ) : (
        <>
          <table className="table dense" data-testid="report-runs">
            <thead><tr><th>When</th><th>What</th><th>By</th><th>Period</th><th>Status</th></tr></thead>
            <tbody>
              {q.data.items.map((r) => (
                <tr key={r.id}>
                  <td><Time value={r.created_at} /></td>
                  <td>{r.kind === "sla" ? <a href={`?run=${r.id}`} onClick={(e) => { e.preventDefault(); open(r.id); }}>SLA report ({String(r.params.format ?? "daily")})</a> : `export of ${String(r.params.what)} (${String(r.params.format)})`}</td>
                  <td>{r.requested_by === "schedule" ? <span className="tag">daily schedule</span> : r.requested_by}</td>
                  <td className="muted small">{r.params.from ? `${String(r.params.from).slice(0, 10)} → ${String(r.params.to).slice(0, 10)}` : "—"}</td>
                  <td>{r.status}{r.error ? <span className="muted small"> {r.error}</span> : null}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="runs" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </section>
  );
}

export function ReportsPage() {
  const { query } = useLocation();
  const key = (query.get("period") as PeriodKey) in PERIODS ? (query.get("period") as PeriodKey) : "7d";
  const runId = query.get("run");
  const [now] = useState(() => Date.now());
  const range = period(key, now);
  const set = (name: string, value: string | null) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    navigate("/reports?" + next.toString(), { replace: true });
  };
  const sla = useQuery({
    queryKey: ["sla", key, now],
    queryFn: () => api<Sla>("/api/v1/reports/sla", { query: range }),
    enabled: !runId,
  });
  const stored = useQuery({
    queryKey: ["report-run", runId],
    queryFn: () => api<Run>(`/api/v1/reports/runs/${runId}`),
    enabled: !!runId,
  });
  const printable = async (id: string) => {
    const token = await accessToken();
    const r = await fetch(`/api/v1/reports/runs/${id}/report.html`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    const url = URL.createObjectURL(new Blob([await r.text()], { type: "text/html" }));
    window.open(url, "_blank");
  };
  const shown = runId ? (stored.data?.result as Sla | undefined) : sla.data;
  const q = runId ? stored : sla;
  return (
    <>
      <div className="page-head">
        <h1>Reports</h1>
        <div className="segmented" role="group" aria-label="Period">
          {(Object.keys(PERIODS) as PeriodKey[]).map((p) => (
            <button key={p} className={!runId && p === key ? "on" : ""} onClick={() => { set("run", null); set("period", p); }}>{p}</button>
          ))}
        </div>
        <span className="spacer" />
        {runId && <button onClick={() => set("run", null)}>Back to the current period</button>}
        {(runId || sla.data?.run_id) && <button onClick={() => printable((runId ?? sla.data?.run_id)!)}>Printable page</button>}
      </div>
      {runId && stored.data && <p className="muted">Stored report of <Time value={stored.data.created_at} />, requested by {stored.data.requested_by === "schedule" ? "the daily schedule" : stored.data.requested_by}.</p>}
      {q.isPending ? <Loading what="Computing the SLA summary" /> : q.isError ? <ErrorBox error={q.error} retry={() => q.refetch()} /> : shown ? <SlaCard sla={shown} /> : <Empty title="This run holds no figures." />}
      <Exports range={range} />
      <History open={(id) => set("run", id)} />
    </>
  );
}
