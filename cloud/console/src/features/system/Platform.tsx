// Platform pieces the NOC and system pages share: charts over system_metrics, the pipeline strip,
// the alert heatmap and tenant sparklines. Every request is audited by the operator API.
import { useMemo } from "react";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { EChart, PALETTE, cssVar } from "../../components/EChart";
import { ErrorBox, Loading } from "../../components/ui";
import { heatCells, lines, sparkPath, type Heatmap, type Range, type SystemMetrics, type Topology } from "./model";

export function useSystemMetrics(names: string[], range: Range) {
  return useQuery({
    queryKey: ["system-metrics", names.join(","), range],
    queryFn: () => api<SystemMetrics>("/api/v1/operator/system/metrics", { query: { name: names, range } }),
    refetchInterval: range === "1h" ? 15_000 : 60_000,
  });
}

export type ChartSpec = { title: string; name: string; label?: string; unit?: string; stacked?: boolean; testId: string };

function areaOption(spec: ChartSpec, data: SystemMetrics | undefined, text: string, grid: string) {
  const ls = lines(data, spec.name, spec.label);
  return {
    animation: false,
    color: PALETTE,
    tooltip: { trigger: "axis" },
    legend: ls.length > 1 ? { top: 0, textStyle: { color: text } } : undefined,
    grid: { left: 48, right: 12, top: ls.length > 1 ? 28 : 12, bottom: 28 },
    xAxis: {
      type: "time",
      min: data ? Date.parse(data.start) : undefined,
      max: data ? Date.parse(data.end) : undefined,
      splitNumber: 4,
      axisLabel: { color: text, hideOverlap: true },
      axisLine: { lineStyle: { color: grid } },
    },
    yAxis: { type: "value", name: spec.unit, nameTextStyle: { color: text }, axisLabel: { color: text }, splitLine: { lineStyle: { color: grid } } },
    series: ls.map((l) => ({
      name: l.name,
      type: "line",
      showSymbol: false,
      stack: spec.stacked ? "total" : undefined,
      areaStyle: { opacity: spec.stacked ? 0.6 : 0.18 },
      data: l.points,
    })),
  };
}

/** One card per figure, each an area chart over the range (stacked where parts make a whole). */
export function PlatformCharts({ specs, range }: { specs: ChartSpec[]; range: Range }) {
  const { theme } = useAccess();
  const names = useMemo(() => [...new Set(specs.map((s) => s.name))], [specs]);
  const q = useSystemMetrics(names, range);
  const options = useMemo(() => {
    const text = cssVar("--text-muted");
    const grid = cssVar("--border");
    return specs.map((s) => areaOption(s, q.data, text, grid));
  }, [q.data, specs, theme]); // eslint-disable-line react-hooks/exhaustive-deps
  if (q.isPending) return <Loading what="Loading platform figures" />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const empty = q.data.series.length === 0;
  return (
    <div className="chart-grid">
      {specs.map((s, i) => (
        <section className="card" key={s.testId}>
          <h2>{s.title}</h2>
          {empty ? (
            <p className="muted small">No samples in this range yet: the cloud samples every few seconds (PULSE_PLATFORM_SAMPLE_INTERVAL_S).</p>
          ) : null}
          <EChart
            option={options[i]}
            height={180}
            label={s.title}
            testId={s.testId}
            probe={lines(q.data, s.name, s.label).map((l) => ({ name: l.name, points: l.points.length, last: l.points.at(-1)?.[1] ?? null }))}
          />
        </section>
      ))}
    </div>
  );
}

export function RangePicker({ range, onChange }: { range: Range; onChange: (r: Range) => void }) {
  return (
    <span className="range-picker" role="group" aria-label="Range">
      {(["1h", "24h"] as const).map((r) => (
        <button key={r} className={`btn small ${r === range ? "on" : ""}`} aria-pressed={r === range} onClick={() => onChange(r)}>
          last {r === "1h" ? "hour" : "day"}
        </button>
      ))}
    </span>
  );
}

/** gateways -> ingest -> writer -> rules -> notify, each coloured by the figure under it. */
export function TopologyStrip() {
  const q = useQuery({ queryKey: ["topology"], queryFn: () => api<Topology>("/api/v1/operator/system/topology"), refetchInterval: 10_000 });
  if (q.isPending) return <Loading what="Loading the pipeline" />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  return (
    <div className="topology" data-testid="topology" aria-label="Pipeline">
      {q.data.stages.map((s, i) => (
        <div key={s.id} className="topology-step">
          {i > 0 && <span className="topology-arrow" aria-hidden>→</span>}
          <div className={`topology-stage stage-${s.status}`} data-testid={`stage-${s.id}`} data-status={s.status} title={s.status}>
            <strong>{s.name}</strong>
            <span className="small">{s.figure}</span>
          </div>
        </div>
      ))}
    </div>
  );
}

export function AlertHeatmap({ days = 7 }: { days?: number }) {
  const { theme } = useAccess();
  const q = useQuery({
    queryKey: ["alert-heatmap", days],
    queryFn: () => api<Heatmap>("/api/v1/operator/alerts/heatmap", { query: { days } }),
    refetchInterval: 60_000,
  });
  const option = useMemo(() => {
    if (!q.data) return null;
    const cells = heatCells(q.data);
    const text = cssVar("--text-muted");
    const max = Math.max(1, ...cells.map((c) => c[2]));
    return {
      animation: false,
      tooltip: { formatter: (p: { data: [number, number, number] }) => `${q.data!.days[p.data[1]]} ${p.data[0]}:00 UTC — ${p.data[2]} alerts` },
      grid: { left: 84, right: 12, top: 8, bottom: 56 },
      xAxis: { type: "category", data: [...Array(24).keys()].map((h) => `${h}`), axisLabel: { color: text }, splitArea: { show: true } },
      yAxis: { type: "category", data: q.data.days, axisLabel: { color: text }, splitArea: { show: true } },
      visualMap: {
        min: 0,
        max,
        calculable: false,
        orient: "horizontal",
        left: "center",
        bottom: 0,
        textStyle: { color: text },
        inRange: { color: [cssVar("--panel"), cssVar("--warn"), cssVar("--bad")] },
      },
      series: [{ type: "heatmap", data: cells, emphasis: { itemStyle: { borderColor: cssVar("--text") } } }],
    };
  }, [q.data, theme]); // eslint-disable-line react-hooks/exhaustive-deps
  if (q.isPending) return <Loading what="Loading alerts by hour" />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const total = q.data.cells.reduce((a, c) => a + c.alerts, 0);
  return <EChart option={option!} height={60 + 26 * q.data.days.length} label="Alerts opened by day and hour (UTC)" testId="alert-heatmap" probe={{ total, cells: q.data.cells.length }} />;
}

export function Spark({ values, label, bad = false }: { values: number[]; label: string; bad?: boolean }) {
  const w = 96;
  const h = 22;
  return (
    <svg width={w} height={h} role="img" aria-label={label} className={`spark ${bad ? "spark-bad" : ""}`} data-values={values.join(",")}>
      <polyline points={sparkPath(values, w, h)} fill="none" strokeWidth="1.5" />
    </svg>
  );
}
