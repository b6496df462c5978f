// Any ECharts option on a canvas that follows its container's size. `probe` is mirrored into the
// container's data-probe attribute so that tests and support staff can read what the chart shows.
import { type MutableRefObject, type RefObject, useEffect, useRef } from "react";
import * as echarts from "echarts/core";
import { BarChart, CustomChart, GaugeChart, HeatmapChart, LineChart, ScatterChart } from "echarts/charts";
import { GridComponent, LegendComponent, MarkAreaComponent, MarkLineComponent, MarkPointComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([
  LineChart, GaugeChart, CustomChart, BarChart, ScatterChart, HeatmapChart,
  GridComponent, TooltipComponent, LegendComponent, MarkLineComponent, MarkPointComponent, MarkAreaComponent, VisualMapComponent,
  CanvasRenderer,
]);

export function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export const PALETTE = ["#2463eb", "#17803d", "#a15c00", "#9c36b5", "#0b7285", "#c0262d", "#5c7cfa", "#e8590c", "#2b8a3e", "#862e9c"];

/** An ECharts instance on the returned container: made on mount, resized with the container,
 * disposed on unmount. Every chart of the console is drawn through it. */
export function useEChart(): [RefObject<HTMLDivElement | null>, MutableRefObject<echarts.ECharts | null>] {
  const el = useRef<HTMLDivElement>(null);
  const chart = useRef<echarts.ECharts | null>(null);
  useEffect(() => {
    const node = el.current!;
    const c = echarts.init(node, undefined, { renderer: "canvas" });
    chart.current = c;
    const ro = new ResizeObserver(() => c.resize());
    ro.observe(node);
    return () => {
      ro.disconnect();
      c.dispose();
      chart.current = null;
    };
  }, []);
  return [el, chart];
}

export function EChart({
  option,
  height = 260,
  testId,
  label,
  probe,
}: {
  option: echarts.EChartsCoreOption;
  height?: number;
  testId?: string;
  label: string;
  probe?: unknown;
}) {
  const [el, chart] = useEChart();
  useEffect(() => {
    chart.current?.setOption(option, { notMerge: true });
    if (el.current) el.current.dataset.probe = probe === undefined ? "" : JSON.stringify(probe);
  }, [option, probe]);
  return <div ref={el} style={{ width: "100%", height }} data-testid={testId} role="img" aria-label={label} />;
}
