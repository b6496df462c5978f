// Rule editor helpers: which form field an API error code points at, a one-line summary of a
// rule's condition, and where preview actions sit on the chart.
import type { PreviewAction, Rule } from "./types";

export const FIELD_OF_CODE: Record<string, string> = {
  "rule.bad_id": "id",
  "rule.reserved_id": "id",
  "rule.bad_name": "name",
  "rule.bad_severity": "severity",
  "rule.bad_kind": "kind",
  "rule.bad_flag": "enabled",
  "rule.bad_metric": "metric",
  "rule.bad_operator": "operator",
  "rule.bad_threshold": "threshold",
  "rule.bad_window": "window_s",
  "rule.bad_scope": "scope",
  "rule.bad_heartbeat": "interval_s",
  "rule.bad_flapping": "flapping",
  "rule.unknown_field": "json",
  "rule.not_object": "json",
  "api.conflict": "id",
};

export const OPERATORS: Record<string, string> = { GT: ">", GTE: "≥", LT: "<", LTE: "≤", EQ: "=", NEQ: "≠" };

export function conditionText(r: Rule): string {
  if ((r.kind ?? "threshold") === "heartbeat") return `heartbeat every ${r.interval_s}s, alert when ${r.alert_on ?? "offline"}`;
  const w = r.window_s ? ` for ${r.window_s}s` : "";
  return `${r.metric} ${OPERATORS[r.operator ?? ""] ?? r.operator} ${r.threshold}${w}`;
}

/** Value of a series [t, v][] at time t: the last point at or before t (or the first one). */
export function valueAt(points: [number, number][], t: number): number | null {
  if (points.length === 0) return null;
  let best = points[0];
  for (const p of points) {
    if (p[0] <= t) best = p;
    else break;
  }
  return best[1];
}

/** Preview actions of one device as chart markers: [t, y, "open" | "close"]. */
export function markers(actions: PreviewAction[], deviceId: string, points: [number, number][]): [number, number, string][] {
  return actions
    .filter((a) => a.device_id === deviceId && (a.action === "OpenAlert" || a.action === "CloseAlert"))
    .map((a) => {
      const t = a.reading_ms ?? a.at_ms; // where the reading sits on the chart (at_ms is when it was received)
      return [t, valueAt(points, t) ?? 0, a.action === "OpenAlert" ? "open" : "close"];
    });
}
