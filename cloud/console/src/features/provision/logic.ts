// Pure helpers of the provisioning pages: CSV parsing and the client-side preview of an import
// (the same checks the API makes, so most mistakes show before anything is sent), and which rules
// would watch a device with a given site and tags (the rule model's scope, docs/alerts.md).

export const DEVICE_ID = /^[A-Za-z0-9_\-.:]{1,128}$/;
export const TAG = /^[A-Za-z0-9_.:=/-]{1,64}$/;
export const IMPORT_COLUMNS = ["device_id", "name", "site", "tags", "status"] as const;
const STATUSES = ["provisioned", "active", "disabled"];

/** RFC 4180 CSV: quoted fields, doubled quotes, CRLF or LF. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  const src = text.replace(/^\uFEFF/, "");
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (quoted) {
      if (c === '"' && src[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && src[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows.filter((r) => r.some((f) => f.trim() !== ""));
}

export type PreviewRow = { line: number; device_id: string; name: string; site: string; tags: string[]; status: string; errors: string[] };
export type Preview = { header_error: string | null; rows: PreviewRow[]; bad: number };

/** What the import would do, checked against the tenant's sites and existing device ids. */
export function preview(text: string, siteNames: Set<string>, existing: Set<string>): Preview {
  const table = parseCsv(text);
  if (table.length === 0) return { header_error: "The file is empty.", rows: [], bad: 0 };
  const header = table[0].map((h) => h.trim());
  if (!header.includes("device_id")) return { header_error: `The first line names the columns and includes device_id (known: ${IMPORT_COLUMNS.join(", ")}).`, rows: [], bad: 0 };
  const unknown = header.filter((h) => !(IMPORT_COLUMNS as readonly string[]).includes(h));
  if (unknown.length) return { header_error: `Unknown columns: ${unknown.join(", ")}. Known: ${IMPORT_COLUMNS.join(", ")}.`, rows: [], bad: 0 };
  if (table.length === 1) return { header_error: "The file has a header but no devices.", rows: [], bad: 0 };
  const seen = new Map<string, number>();
  const rows = table.slice(1).map((cells, i): PreviewRow => {
    const get = (col: string) => (cells[header.indexOf(col)] ?? "").trim();
    const line = i + 2;
    const device_id = get("device_id");
    const tags = get("tags").split(";").map((t) => t.trim()).filter(Boolean);
    const status = get("status") || "provisioned";
    const errors: string[] = [];
    if (!DEVICE_ID.test(device_id)) errors.push("device_id is 1-128 letters, digits, '_', '-', '.', ':'");
    else if (seen.has(device_id)) errors.push(`device_id repeats line ${seen.get(device_id)}`);
    else if (existing.has(device_id)) errors.push("a device with this device_id exists");
    if (DEVICE_ID.test(device_id) && !seen.has(device_id)) seen.set(device_id, line);
    if (get("site") && !siteNames.has(get("site"))) errors.push(`no site named "${get("site")}"`);
    if (!STATUSES.includes(status)) errors.push("status is provisioned, active or disabled");
    const badTag = tags.find((t) => !TAG.test(t));
    if (badTag) errors.push(`tag "${badTag.slice(0, 70)}": tags are 1-64 letters, digits or _ . : = / -`);
    if (get("name").length > 200) errors.push("name is at most 200 characters");
    return { line, device_id, name: get("name"), site: get("site"), tags, status, errors };
  });
  return { header_error: null, rows, bad: rows.filter((r) => r.errors.length).length };
}

export type RuleScope = { devices?: string[]; tags?: Record<string, string>; sites?: string[] };

/** Whether a rule's scope covers a device (every non-empty part must match). */
export function inScope(scope: RuleScope | undefined, device: { device_id: string; site_id: string | null; tags: string[] }): boolean {
  const s = scope ?? {};
  const tags = new Map(device.tags.map((t) => {
    const i = t.indexOf("=");
    return i < 0 ? [t, ""] : [t.slice(0, i), t.slice(i + 1)];
  }));
  return (
    (!s.devices?.length || s.devices.includes(device.device_id)) &&
    (!s.sites?.length || (device.site_id !== null && s.sites.includes(device.site_id))) &&
    Object.entries(s.tags ?? {}).every(([k, v]) => tags.get(k) === v)
  );
}

/** A CSV of codes or tokens to download (shown once). */
export function csvOf(header: string[], rows: string[][]): string {
  const cell = (v: string) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  return [header, ...rows].map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}
