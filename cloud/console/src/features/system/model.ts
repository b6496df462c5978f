// What the operator's platform endpoints answer (cloud/api/system.py), and the pure shaping the
// pages do with it (tested in system.test.ts).
export type Series = { name: string; labels: Record<string, string>; points: [string, number][] };
export type SystemMetrics = { range: string; bucket_s: number; start: string; end: string; series: Series[] };
export type Stage = { id: string; name: string; status: "ok" | "warn" | "critical" | "unknown"; figure: string };
export type Topology = { sampled_at: string | null; stages: Stage[] };
export type HeatCell = { day: string; hour: number; alerts: number };
export type Heatmap = { days: string[]; cells: HeatCell[] };
export type Sparkline = { tenant_id: string; slug: string; readings: number[]; alerts: number[] };
export type Sparklines = { hours: number; start: string; tenants: Sparkline[] };
export type Partition = { name: string; range_start: string | null; range_end: string | null; bytes: number; rows_estimate: number };
export type Worker = { name: string; running: boolean; last_run_at: string | null; detail: string };
export type SystemOverview = {
  database: string;
  database_bytes: number;
  storage_engine: "timescaledb" | "native";
  telemetry_bytes: number;
  system_metrics_bytes: number;
  telemetry_rows_per_day: [string, number][];
  partitions: Partition[];
  oldest_data: string | null;
  retention_days: number;
  system_metrics_retention_days: number;
  workers: Worker[];
  writer_queue_rows: number;
  db_pools: Record<string, { in_use: number; size: number; max: number }>;
};
export type OperatorAuditEntry = {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  tenant_id: string | null;
  tenant_slug: string | null;
  detail: Record<string, unknown>;
};

export const RANGES = ["1h", "24h"] as const;
export type Range = (typeof RANGES)[number];

/** The series of one figure, one line per label set, named by the label values (or the figure). */
export function lines(data: SystemMetrics | undefined, name: string, label?: string): { name: string; points: [number, number][] }[] {
  return (data?.series ?? [])
    .filter((s) => s.name === name)
    .map((s) => ({
      name: label ? s.labels[label] ?? name : Object.values(s.labels).join(" ") || name,
      points: s.points.map(([t, v]) => [Date.parse(t), v] as [number, number]),
    }));
}

/** The heatmap's cells as [hour, day index, alerts] for every (day, hour), zeros included. */
export function heatCells(h: Heatmap): [number, number, number][] {
  const count = new Map(h.cells.map((c) => [`${c.day}/${c.hour}`, c.alerts]));
  const out: [number, number, number][] = [];
  h.days.forEach((day, d) => {
    for (let hour = 0; hour < 24; hour++) out.push([hour, d, count.get(`${day}/${hour}`) ?? 0]);
  });
  return out;
}

/** An SVG polyline's points for values in a width x height box (flat at the bottom when all zero). */
export function sparkPath(values: number[], width: number, height: number): string {
  if (values.length === 0) return "";
  const max = Math.max(...values, 0);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((v, i) => `${(i * step).toFixed(1)},${(max > 0 ? height - 1 - (v / max) * (height - 2) : height - 1).toFixed(1)}`)
    .join(" ");
}
