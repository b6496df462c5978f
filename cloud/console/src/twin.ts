// The twin side by side: desired, reported and delta flattened into one row per leaf path, so a
// nested document reads as a table ("config.sampling.interval_s"). A path is "pending" when it is
// in the delta (desired and not yet reported as such).

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type Doc = { [k: string]: Json };

export type TwinRow = {
  path: string;
  desired: Json | undefined;
  reported: Json | undefined;
  delta: Json | undefined;
  status: "in-sync" | "pending" | "reported-only" | "desired-only";
};

const isObject = (v: unknown): v is Doc => typeof v === "object" && v !== null && !Array.isArray(v);

/** Leaf paths of a document: objects are walked, everything else (arrays too) is a leaf. */
export function flatten(doc: Json | undefined, prefix = "", out: Map<string, Json> = new Map()): Map<string, Json> {
  if (isObject(doc)) {
    const keys = Object.keys(doc);
    if (keys.length === 0 && prefix) out.set(prefix, {});
    for (const k of keys) flatten(doc[k], prefix ? `${prefix}.${k}` : k, out);
  } else if (doc !== undefined && prefix) {
    out.set(prefix, doc);
  }
  return out;
}

export function same(a: Json | undefined, b: Json | undefined): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function twinRows(desired: Doc, reported: Doc, delta: Doc): TwinRow[] {
  const d = flatten(desired);
  const r = flatten(reported);
  const x = flatten(delta);
  const paths = [...new Set([...d.keys(), ...r.keys(), ...x.keys()])].sort();
  return paths.map((path) => {
    const row = { path, desired: d.get(path), reported: r.get(path), delta: x.get(path) };
    const status: TwinRow["status"] = x.has(path)
      ? "pending"
      : d.has(path) && r.has(path)
        ? same(row.desired, row.reported) ? "in-sync" : "pending"
        : d.has(path)
          ? "desired-only"
          : "reported-only";
    return { ...row, status };
  });
}

/** Parse the desired-state editor's text: a JSON object, or an error sentence for the user. */
export function parseDesired(text: string): { ok: true; doc: Doc } | { ok: false; error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `Not valid JSON: ${(e as Error).message}` };
  }
  if (!isObject(value)) return { ok: false, error: "Desired state is a JSON object, e.g. {\"setpoint\": 21}" };
  return { ok: true, doc: value as Doc };
}

/** The merge patch that turns `from` into `to` (twin updates merge objects; null removes a key). */
export function mergePatch(from: Doc, to: Doc): Doc {
  const patch: Doc = {};
  for (const k of Object.keys(from)) if (!(k in to)) patch[k] = null;
  for (const [k, v] of Object.entries(to)) {
    const old = from[k];
    if (isObject(v) && isObject(old)) {
      const inner = mergePatch(old, v);
      if (Object.keys(inner).length) patch[k] = inner;
    } else if (!same(old, v)) {
      patch[k] = v;
    }
  }
  return patch;
}
