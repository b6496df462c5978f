import { describe, expect, it } from "vitest";
import { heatCells, lines, sparkPath, type SystemMetrics } from "./model";

describe("platform pages", () => {
  it("fills every day x hour of the heatmap, zeros included", () => {
    const cells = heatCells({ days: ["2026-07-01", "2026-07-02"], cells: [{ day: "2026-07-02", hour: 9, alerts: 4 }] });
    expect(cells).toHaveLength(48);
    expect(cells.find(([h, d]) => h === 9 && d === 1)).toEqual([9, 1, 4]);
    expect(cells.filter(([, , n]) => n > 0)).toHaveLength(1);
  });
  it("names a figure's lines by the label asked for", () => {
    const data: SystemMetrics = {
      range: "1h", bucket_s: 60, start: "", end: "",
      series: [
        { name: "devices", labels: { state: "online" }, points: [["2026-07-01T00:00:00Z", 3]] as [string, number][] },
        { name: "devices", labels: { state: "offline" }, points: [] as [string, number][] },
        { name: "writer_queue_rows", labels: {}, points: [] as [string, number][] },
      ],
    };
    expect(lines(data, "devices", "state").map((l) => l.name)).toEqual(["online", "offline"]);
    expect(lines(data, "devices", "state")[0].points[0]).toEqual([Date.parse("2026-07-01T00:00:00Z"), 3]);
    expect(lines(data, "writer_queue_rows")[0].name).toBe("writer_queue_rows");
  });
  it("draws a sparkline flat at the bottom when nothing happened, peaks at the top", () => {
    expect(sparkPath([0, 0], 10, 10)).toBe("0.0,9.0 10.0,9.0");
    expect(sparkPath([0, 5], 10, 10)).toBe("0.0,9.0 10.0,1.0");
  });
});
