// Pure chart logic: time ranges, and folding live readings into server-side buckets.
import type { Point } from "./types";

const DAY = 24 * 3_600_000;
export const RANGES = {
  "15m": 15 * 60_000, "1h": 3_600_000, "6h": 6 * 3_600_000, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "1y": 365 * DAY,
} as const;
export type RangeKey = keyof typeof RANGES;

/** Ranges the chart draws from hourly or daily rollups (the telemetry archive's gold layer, and
 *  PostgreSQL for the days not archived yet): the API's /telemetry/history. */
export const ROLLUP: Partial<Record<RangeKey, "hour" | "day">> = { "7d": "hour", "30d": "hour", "1y": "day" };

export function rangeWindow(range: RangeKey, now: number): { from: string; to: string } {
  // `to` is a little in the future so that readings stamped by a device with a fast clock still show
  return { from: new Date(now - RANGES[range]).toISOString(), to: new Date(now + 60_000).toISOString() };
}

/** The bucket a reading falls in: buckets start at multiples of their width since the Unix epoch
 *  (the server bins the same way: date_bin(width, time, 'epoch')). */
export function bucketStart(t: number, bucketMs: number): number {
  return Math.floor(t / bucketMs) * bucketMs;
}

/**
 * Fold one live reading into a sorted series of buckets, returning a new array:
 * a reading inside an existing bucket updates its mean/min/max/count, one past the end opens a new
 * bucket, one before the window (older than `since`) is ignored, and one between buckets is inserted
 * in order. Buckets older than `since` are dropped so that a live chart keeps a sliding window.
 */
export function foldReading(points: readonly Point[], t: number, value: number, bucketMs: number, since: number): Point[] {
  const start = bucketStart(t, bucketMs);
  const kept = points.filter((p) => p[0] + bucketMs > since);
  if (t < since || !Number.isFinite(value)) return kept;
  let lo = 0;
  let hi = kept.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (kept[mid][0] < start) lo = mid + 1;
    else hi = mid;
  }
  const out = kept.slice();
  const hit = out[lo];
  if (hit && hit[0] === start) {
    const n = hit[4] + 1;
    out[lo] = [start, hit[1] + (value - hit[1]) / n, Math.min(hit[2], value), Math.max(hit[3], value), n];
  } else {
    out.splice(lo, 0, [start, value, value, value, 1]);
  }
  return out;
}

/** A metric value as a number for charting: booleans are 1/0, anything else is not charted. */
export function numeric(v: unknown): number | null {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  return null;
}
