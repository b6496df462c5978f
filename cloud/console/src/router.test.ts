import { describe, expect, it } from "vitest";
import { match } from "./router";
import { queryString } from "./api";

describe("match", () => {
  it("captures parameters and tolerates a trailing slash", () => {
    expect(match("/devices/:id", "/devices/abc")).toEqual({ id: "abc" });
    expect(match("/devices/:id", "/devices/abc/")).toEqual({ id: "abc" });
    expect(match("/devices", "/devices/abc")).toBeNull();
    expect(match("/", "/")).toEqual({});
  });
});

describe("queryString", () => {
  it("drops empty values and repeats arrays", () => {
    expect(queryString({ q: "", site: undefined, tag: ["a", "b c"], limit: 50 })).toBe("?tag=a&tag=b+c&limit=50");
    expect(queryString({})).toBe("");
  });
});
