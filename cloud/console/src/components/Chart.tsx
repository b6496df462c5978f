// A time-series line chart (ECharts, canvas). The mean per bucket is the line; min-max is a band.
// The data ECharts actually holds is mirrored into data-* attributes of the container, so that
// tests and support staff can read what the chart shows (data-metric, data-point-count, data-points, data-last).
import { useEffect } from "react";
import type { Point } from "../types";
import { cssVar, useEChart } from "./EChart";

export function Chart({ points, metric, theme }: { points: Point[]; metric: string; theme: string }) {
  const [el, chart] = useEChart();

  useEffect(() => {
    const c = chart.current;
    const node = el.current;
    if (!c || !node) return;
    const text = cssVar("--text-muted");
    const grid = cssVar("--border");
    const accent = cssVar("--accent");
    c.setOption(
      {
        animation: false,
        grid: { left: 48, right: 16, top: 16, bottom: 28 },
        tooltip: { trigger: "axis", valueFormatter: (v: unknown) => (typeof v === "number" ? v.toPrecision(4) : String(v)) },
        xAxis: { type: "time", axisLabel: { color: text }, axisLine: { lineStyle: { color: grid } } },
        yAxis: { type: "value", scale: true, axisLabel: { color: text }, splitLine: { lineStyle: { color: grid } } },
        series: [
          { id: "min", name: "min", type: "line", data: points.map((p) => [p[0], p[2]]), stack: "band", symbol: "none", lineStyle: { opacity: 0 }, tooltip: { show: false } },
          { id: "band", name: "max", type: "line", data: points.map((p) => [p[0], p[3] - p[2]]), stack: "band", symbol: "none", lineStyle: { opacity: 0 }, areaStyle: { color: accent, opacity: 0.15 }, tooltip: { show: false } },
          { id: "mean", name: metric, type: "line", data: points.map((p) => [p[0], p[1]]), showSymbol: points.length < 60, symbolSize: 4, lineStyle: { width: 2, color: accent }, itemStyle: { color: accent } },
        ],
      },
      { replaceMerge: ["series"] },
    );
    // mirror what ECharts holds now (read back from the instance, not from our props)
    const option = c.getOption() as { series: { id: string; data: [number, number][] }[] };
    const held = option.series.find((s) => s.id === "mean")?.data ?? [];
    node.dataset.metric = metric;
    node.dataset.pointCount = String(held.length);
    node.dataset.points = JSON.stringify(held);
    node.dataset.last = held.length ? JSON.stringify(held[held.length - 1]) : "";
  }, [points, metric, theme]);

  return <div ref={el} className="chart" data-testid="telemetry-chart" role="img" aria-label={`${metric} over time`} />;
}
