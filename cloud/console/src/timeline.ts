// The on-call timeline: the schedule's segments ({start, end, member, layer|override}) laid out as
// bars on one row per lane (each layer, overrides on top, and "on call" = what actually applies),
// clipped to the window, with a stable colour per member.

export type Segment = { start: string; end: string; member: { name: string; channel?: string | null } | null; layer?: string; override?: string | boolean };
export type Bar = { lane: number; laneName: string; start: number; end: number; member: string; color: number; override: boolean };
export type Layout = { lanes: string[]; bars: Bar[]; members: string[]; from: number; to: number };

export const ON_CALL = "on call";
export const OVERRIDES = "overrides";

function laneOf(s: Segment): string {
  return s.override ? OVERRIDES : s.layer || "layer";
}

/** Lay out segments in [from, to): lanes are "on call" first, then overrides, then layers in order of appearance. */
export function layoutTimeline(segments: Segment[], from: number, to: number): Layout {
  const members: string[] = [];
  const colorOf = (name: string) => {
    let i = members.indexOf(name);
    if (i < 0) i = members.push(name) - 1;
    return i;
  };
  const layers: string[] = [];
  let anyOverride = false;
  for (const s of segments) {
    if (s.override) anyOverride = true;
    else if (!layers.includes(laneOf(s))) layers.push(laneOf(s));
  }
  const lanes = [ON_CALL, ...(anyOverride ? [OVERRIDES] : []), ...layers];
  const bars: Bar[] = [];
  for (const s of [...segments].sort((a, b) => Date.parse(a.start) - Date.parse(b.start))) {
    const start = Math.max(from, Date.parse(s.start));
    const end = Math.min(to, Date.parse(s.end));
    if (!(end > start) || !s.member) continue;
    const lane = laneOf(s);
    bars.push({ lane: lanes.indexOf(lane), laneName: lane, start, end, member: s.member.name, color: colorOf(s.member.name), override: !!s.override });
  }
  // "on call": an override wins over the layers where they overlap; among layers, the last listed wins
  const rank = (b: Bar) => (b.override ? Number.MAX_SAFE_INTEGER : layers.indexOf(b.laneName));
  const cuts = [...new Set(bars.flatMap((b) => [b.start, b.end]))].sort((a, b) => a - b);
  const effective: Bar[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const [a, b] = [cuts[i], cuts[i + 1]];
    const covering = bars.filter((x) => x.start <= a && x.end >= b);
    if (covering.length === 0) continue;
    const top = covering.reduce((p, q) => (rank(q) > rank(p) ? q : p));
    const last = effective[effective.length - 1];
    if (last && last.end === a && last.member === top.member) last.end = b;
    else effective.push({ ...top, lane: 0, laneName: ON_CALL, start: a, end: b });
  }
  return { lanes, bars: [...effective, ...bars], members, from, to };
}

/** Gaps in [from, to) where nobody is on call. */
export function gaps(layout: Layout): [number, number][] {
  const out: [number, number][] = [];
  let t = layout.from;
  for (const b of layout.bars.filter((x) => x.lane === 0)) {
    if (b.start > t) out.push([t, b.start]);
    t = Math.max(t, b.end);
  }
  if (t < layout.to) out.push([t, layout.to]);
  return out;
}
