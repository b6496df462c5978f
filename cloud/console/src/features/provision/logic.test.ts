import { describe, expect, it } from "vitest";
import { csvOf, inScope, parseCsv, preview } from "./logic";

describe("parseCsv", () => {
  it("reads quoted fields, doubled quotes and CRLF", () => {
    expect(parseCsv('a,b\r\n"x, y","say ""hi"""\n\n')).toEqual([["a", "b"], ["x, y", 'say "hi"']]);
  });
});

describe("preview", () => {
  const sites = new Set(["North"]);
  it("codes every bad row the way the API would", () => {
    const p = preview("device_id,site,tags,status\nok-1,North,a;b,\nok-1,,,\nbad id,,,\nx-2,South,,\nx-3,,,broken\nx-4,,bad tag!,\nold,,,\n", sites, new Set(["old"]));
    expect(p.header_error).toBeNull();
    expect(p.rows.map((r) => [r.line, r.errors.length])).toEqual([[2, 0], [3, 1], [4, 1], [5, 1], [6, 1], [7, 1], [8, 1]]);
    expect(p.rows[1].errors[0]).toContain("repeats line 2");
    expect(p.rows[6].errors[0]).toContain("exists");
    expect(p.bad).toBe(6);
  });
  it("refuses a file without device_id or with unknown columns", () => {
    expect(preview("name\nx\n", sites, new Set()).header_error).toContain("device_id");
    expect(preview("device_id,colour\nx,red\n", sites, new Set()).header_error).toContain("colour");
  });
});

describe("inScope", () => {
  const d = { device_id: "d1", site_id: "s1", tags: ["floor=2", "hvac"] };
  it("matches every non-empty part", () => {
    expect(inScope(undefined, d)).toBe(true);
    expect(inScope({ tags: { floor: "2" } }, d)).toBe(true);
    expect(inScope({ tags: { floor: "3" } }, d)).toBe(false);
    expect(inScope({ sites: ["s2"] }, d)).toBe(false);
    expect(inScope({ devices: ["d1"], tags: { hvac: "" } }, d)).toBe(true);
  });
});

it("csvOf quotes what needs it", () => {
  expect(csvOf(["a"], [["x,y"]])).toBe('a\r\n"x,y"\r\n');
});
