// NOC helpers: gauge scales that fit the value, and the bounded live event list.
import type { FeedEvent } from "./types";

/** A "nice" gauge maximum: at least `floor`, and the value sits below ~80% of it. */
export function niceMax(value: number, floor = 10): number {
  const want = Math.max(floor, value * 1.25);
  const mag = 10 ** Math.floor(Math.log10(want));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * mag >= want) return step * mag;
  return 10 * mag;
}

export function poolPct(p: { in_use: number; max: number } | undefined): number {
  return p && p.max > 0 ? Math.round((100 * p.in_use) / p.max) : 0;
}

/** New events first, at most `limit` kept. */
export function pushEvents(list: FeedEvent[], events: FeedEvent[], limit = 50): FeedEvent[] {
  return [...[...events].sort((a, b) => b.t - a.t), ...list].slice(0, limit);
}
