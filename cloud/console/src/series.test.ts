import { describe, expect, it } from "vitest";
import { bucketStart, foldReading, numeric, rangeWindow } from "./series";
import type { Point } from "./types";

const M = 60_000;

describe("foldReading", () => {
  const base: Point[] = [
    [0, 10, 10, 10, 1],
    [M, 20, 15, 25, 2],
  ];

  it("updates the bucket a reading falls in (running mean, min, max, count)", () => {
    const out = foldReading(base, M + 30_000, 35, M, 0);
    expect(out[1]).toEqual([M, 25, 15, 35, 3]);
    expect(base[1]).toEqual([M, 20, 15, 25, 2]); // input untouched
  });

  it("opens a new bucket after the last one", () => {
    expect(foldReading(base, 3 * M + 5, 7, M, 0).at(-1)).toEqual([3 * M, 7, 7, 7, 1]);
  });

  it("inserts a late reading between buckets in time order", () => {
    const sparse: Point[] = [
      [0, 1, 1, 1, 1],
      [5 * M, 2, 2, 2, 1],
    ];
    expect(foldReading(sparse, 2 * M, 9, M, 0).map((p) => p[0])).toEqual([0, 2 * M, 5 * M]);
  });

  it("slides the window: buckets and readings before `since` are dropped", () => {
    const out = foldReading(base, 2 * M, 1, M, M);
    expect(out.map((p) => p[0])).toEqual([M, 2 * M]);
    expect(foldReading(base, 10, 1, M, M)).toEqual([base[1]]);
  });

  it("ignores values that are not finite numbers", () => {
    expect(foldReading(base, 2 * M, Number.NaN, M, 0)).toEqual(base);
  });
});

describe("buckets and values", () => {
  it("bins like the server, from the epoch", () => {
    expect(bucketStart(Date.UTC(2026, 2, 1, 12, 0, 59, 999), M)).toBe(Date.UTC(2026, 2, 1, 12, 0));
    expect(bucketStart(-1, M)).toBe(-M);
  });

  it("charts booleans as 0/1 and nothing else that is not a number", () => {
    expect([numeric(true), numeric(false), numeric(3.5), numeric("x"), numeric(Infinity)]).toEqual([1, 0, 3.5, null, null]);
  });

  it("asks for the range up to a minute ahead of now", () => {
    const now = Date.UTC(2026, 0, 1);
    expect(rangeWindow("1h", now)).toEqual({ from: "2025-12-31T23:00:00.000Z", to: "2026-01-01T00:01:00.000Z" });
  });
});
