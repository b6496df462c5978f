import { describe, expect, it } from "vitest";
import { next, previous, cursorsFor, type CursorStack } from "./paging";
import { flatten, parseDesired, twinRows } from "./twin";
import { gaps, layoutTimeline, ON_CALL, OVERRIDES } from "./timeline";

describe("paging", () => {
  const k = JSON.stringify({ state: "open" });
  it("pushes and pops cursors for one set of filters", () => {
    let s: CursorStack = { key: k, cursors: [null] };
    s = next(s, k, "c1");
    s = next(s, k, "c2");
    expect(cursorsFor(s, k)).toEqual([null, "c1", "c2"]);
    s = previous(s, k);
    expect(cursorsFor(s, k)).toEqual([null, "c1"]);
  });
  it("starts at page 1 when the filters change", () => {
    const s = next({ key: k, cursors: [null] }, k, "c1");
    expect(cursorsFor(s, JSON.stringify({ state: "closed" }))).toEqual([null]);
    expect(cursorsFor(next(s, "other", "x"), "other")).toEqual([null, "x"]);
  });
  it("never goes past the last page or before the first", () => {
    const s: CursorStack = { key: k, cursors: [null] };
    expect(next(s, k, null)).toBe(s);
    expect(cursorsFor(previous(s, k), k)).toEqual([null]);
  });
});

describe("twin rows", () => {
  it("flattens nested objects to leaf paths; arrays are leaves", () => {
    expect([...flatten({ a: { b: 1, c: [1, 2] }, d: null })]).toEqual([["a.b", 1], ["a.c", [1, 2]], ["d", null]]);
  });
  it("marks each path in sync, pending (in the delta), desired-only or reported-only", () => {
    const rows = twinRows(
      { setpoint: 22, mode: "eco", cfg: { rate: 5 } },
      { setpoint: 21, mode: "eco", fw: "1.2", cfg: { rate: 5 } },
      { setpoint: 22 },
    );
    expect(rows.map((r) => [r.path, r.status])).toEqual([
      ["cfg.rate", "in-sync"],
      ["fw", "reported-only"],
      ["mode", "in-sync"],
      ["setpoint", "pending"],
    ]);
    expect(rows.find((r) => r.path === "setpoint")).toMatchObject({ desired: 22, reported: 21, delta: 22 });
  });
  it("a desired value not in reported nor delta is desired-only; a differing one still reads pending", () => {
    expect(twinRows({ a: 1, b: 2 }, { b: 3 }, {}).map((r) => r.status)).toEqual(["desired-only", "pending"]);
  });
  it("parses the editor text or says why not", () => {
    expect(parseDesired('{"a": 1}')).toEqual({ ok: true, doc: { a: 1 } });
    expect(parseDesired("[1]")).toMatchObject({ ok: false });
    expect(parseDesired("{a: 1}")).toMatchObject({ ok: false });
  });
});

describe("on-call timeline layout", () => {
  const H = 3_600_000;
  const iso = (h: number) => new Date(h * H).toISOString();
  const from = 0;
  const to = 48 * H;
  const segments = [
    { start: iso(-10), end: iso(24), member: { name: "ana" }, layer: "primary" },
    { start: iso(24), end: iso(60), member: { name: "bo" }, layer: "primary" },
    { start: iso(6), end: iso(30), member: { name: "cy" }, layer: "secondary" },
    { start: iso(10), end: iso(12), member: { name: "dee" }, override: true },
  ];
  const layout = layoutTimeline(segments, from, to);
  it("has an on-call lane, an overrides lane and one lane per layer", () => {
    expect(layout.lanes).toEqual([ON_CALL, OVERRIDES, "primary", "secondary"]);
  });
  it("clips bars to the window and colours each member the same everywhere", () => {
    const primary = layout.bars.filter((b) => b.laneName === "primary");
    expect(primary.map((b) => [b.start / H, b.end / H, b.member])).toEqual([[0, 24, "ana"], [24, 48, "bo"]]);
    const colours = new Map<string, Set<number>>();
    layout.bars.forEach((b) => colours.set(b.member, (colours.get(b.member) ?? new Set()).add(b.color)));
    expect([...colours.values()].every((c) => c.size === 1)).toBe(true);
  });
  it("on call: overrides win, later layers win over earlier ones, neighbours merge", () => {
    const onCall = layout.bars.filter((b) => b.lane === 0).map((b) => [b.start / H, b.end / H, b.member]);
    expect(onCall).toEqual([[0, 6, "ana"], [6, 10, "cy"], [10, 12, "dee"], [12, 30, "cy"], [30, 48, "bo"]]);
    expect(gaps(layout)).toEqual([]);
  });
  it("finds the hours nobody is on call", () => {
    const l = layoutTimeline([{ start: iso(2), end: iso(5), member: { name: "ana" }, layer: "p" }], 0, 10 * H);
    expect(gaps(l).map(([a, b]) => [a / H, b / H])).toEqual([[0, 2], [5, 10]]);
  });
});

import { conditionText, FIELD_OF_CODE, markers, valueAt } from "./rules";

describe("rule helpers", () => {
  it("points API codes at form fields", () => {
    expect(FIELD_OF_CODE["rule.bad_threshold"]).toBe("threshold");
    expect(FIELD_OF_CODE["rule.bad_metric"]).toBe("metric");
  });
  it("summarises conditions", () => {
    expect(conditionText({ id: "x", severity: "major", metric: "temp", operator: "GT", threshold: 30, window_s: 60 })).toBe("temp > 30 for 60s");
  });
  it("puts preview actions on the series at the value they fired on", () => {
    const pts: [number, number][] = [[0, 1], [10, 5], [20, 2]];
    expect(valueAt(pts, 15)).toBe(5);
    expect(valueAt(pts, -5)).toBe(1);
    const acts = [
      { action: "OpenAlert", device_id: "d", at_ms: 12, text: "" },
      { action: "CloseAlert", device_id: "d", at_ms: 25, text: "" },
      { action: "OpenAlert", device_id: "other", at_ms: 12, text: "" },
      { action: "OpenAlert", device_id: "d", at_ms: 99, reading_ms: 3, text: "" },
    ];
    expect(markers(acts, "d", pts)).toEqual([[12, 5, "open"], [25, 2, "close"], [3, 1, "open"]]);
  });
});

import { niceMax, poolPct, pushEvents } from "./noc";

describe("NOC helpers", () => {
  it("picks a gauge maximum that leaves headroom", () => {
    expect(niceMax(0)).toBe(10);
    expect(niceMax(9)).toBe(20);
    expect(niceMax(130)).toBe(200);
    expect(niceMax(1900)).toBe(2500);
  });
  it("pool use in percent", () => {
    expect(poolPct({ in_use: 3, max: 12 })).toBe(25);
    expect(poolPct(undefined)).toBe(0);
  });
  it("keeps the newest events first and bounded", () => {
    const ev = (t: number) => ({ t, tenant_id: "x", device_id: `d${t}`, readings: 1, metrics: {} });
    const list = pushEvents([ev(1)], [ev(2), ev(3)], 2);
    expect(list.map((e) => e.t)).toEqual([3, 2]);
  });
});

import { mergePatch } from "./twin";

describe("desired-state merge patch", () => {
  it("sets changed leaves, removes dropped keys with null, leaves the rest out", () => {
    expect(mergePatch({ a: 1, b: { c: 2, d: 3 }, e: 5 }, { a: 1, b: { c: 4 }, f: [1] })).toEqual({ b: { c: 4, d: null }, e: null, f: [1] });
  });
  it("is empty when nothing changed", () => {
    expect(mergePatch({ a: { b: 1 } }, { a: { b: 1 } })).toEqual({});
  });
  it("replaces a leaf by an object and an object by a leaf", () => {
    expect(mergePatch({ a: 1, b: { c: 1 } }, { a: { x: 1 }, b: 2 })).toEqual({ a: { x: 1 }, b: 2 });
  });
});
