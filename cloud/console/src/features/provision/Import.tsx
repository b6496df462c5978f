// Bulk import from CSV: the file is checked in the browser first (a preview with each row's
// problems), then sent to the API, which checks again and imports all rows or none (its per-row
// errors and the device limit come back into the same table). Tokens for the imported devices can
// then be made in one go and downloaded once.
import { useMemo, useState } from "react";
import { useQueryClient } from "@tanstack/react-query";
import { ApiError, api, session } from "../../api";
import { useSites } from "../sites/useSites";
import type { DevicePage, IssuedCredential } from "../../types";
import { ErrorBox } from "../../components/ui";
import { csvOf, preview, type PreviewRow } from "./logic";

type RowError = { row: number; device_id: string | null; code: string; message: string };
type Result = { imported: number } | { rejected: RowError[]; message: string } | { refused: ApiError };

const SAMPLE = "device_id,name,site,tags,status\nboiler-01,Boiler 1,,floor=1;hvac,active\n";

async function postCsv(text: string): Promise<Response> {
  const s = session.get();
  return fetch("/api/v1/devices/import", {
    method: "POST",
    headers: { "Content-Type": "text/csv", ...(s ? { Authorization: `Bearer ${s.access}` } : {}) },
    body: text,
  });
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  URL.revokeObjectURL(url);
}

export function ImportPage() {
  const sites = useSites();
  const client = useQueryClient();
  const [text, setText] = useState("");
  const [result, setResult] = useState<Result | null>(null);
  const [busy, setBusy] = useState(false);
  const [tokens, setTokens] = useState<IssuedCredential[] | null>(null);
  const names = useMemo(() => new Set((sites.data ?? []).map((s) => s.name)), [sites.data]);
  const p = useMemo(() => (text.trim() ? preview(text, names, new Set()) : null), [text, names]);
  const serverErrors = result && "rejected" in result ? result.rejected : [];
  const errorsOf = (r: PreviewRow) => [...r.errors, ...serverErrors.filter((e) => e.row === r.line && !r.errors.includes(e.message)).map((e) => `${e.code}: ${e.message}`)];

  async function submit() {
    setBusy(true);
    setResult(null);
    setTokens(null);
    try {
      let r = await postCsv(text);
      if (r.status === 401 && session.get()) {
        await api("/api/v1/me"); // refreshes the session once, then try again
        r = await postCsv(text);
      }
      const body = await r.json();
      if (r.status === 201) {
        setResult({ imported: body.imported });
        client.invalidateQueries({ queryKey: ["devices"] });
      } else if (r.status === 422 && Array.isArray(body.errors)) setResult({ rejected: body.errors, message: body.message });
      else setResult({ refused: new ApiError(r.status, body.code ?? `http.${r.status}`, body.message ?? r.statusText, body) });
    } finally {
      setBusy(false);
    }
  }

  async function issueTokens() {
    if (!p) return;
    setBusy(true);
    const made: IssuedCredential[] = [];
    try {
      for (const row of p.rows) {
        const page = await api<DevicePage>("/api/v1/devices", { query: { q: row.device_id, limit: 50 } });
        const d = page.items.find((x) => x.device_id === row.device_id);
        if (d) made.push(await api<IssuedCredential>(`/api/v1/devices/${d.id}/credentials`, { method: "POST" }));
      }
    } finally {
      setTokens(made);
      setBusy(false);
    }
  }

  return (
    <>
      <h1>Import devices</h1>
      <p className="muted note">
        A CSV file with a header line: <code>device_id</code> (required), <code>name</code>, <code>site</code> (a site's name),{" "}
        <code>tags</code> (separated by <code>;</code>), <code>status</code> (provisioned, active or disabled). All rows are imported or
        none; the device limit of the subscription applies.
      </p>
      <section className="card">
        <div className="row">
          <input
            type="file"
            accept=".csv,text/csv"
            aria-label="CSV file"
            onChange={async (e) => {
              const f = e.target.files?.[0];
              if (f) {
                setText(await f.text());
                setResult(null);
                setTokens(null);
              }
            }}
          />
          <button className="btn small" onClick={() => setText(SAMPLE)}>
            Start from an example
          </button>
        </div>
        <textarea aria-label="CSV text" rows={6} className="mono" value={text} onChange={(e) => (setText(e.target.value), setResult(null), setTokens(null))} />
      </section>
      {p?.header_error && <div className="error" role="alert">{p.header_error}</div>}
      {p && !p.header_error && (
        <>
          <p data-testid="import-summary">
            {p.rows.length} row(s); {p.bad ? <strong className="bad">{p.bad} with problems: nothing can be imported until they are fixed</strong> : "no problems found in the browser"}
            {serverErrors.length > 0 && <>; <strong className="bad">the server refused {serverErrors.length} row(s)</strong></>}.
          </p>
          <table className="table" data-testid="import-preview">
            <thead>
              <tr><th>Line</th><th>Device id</th><th>Name</th><th>Site</th><th>Tags</th><th>Status</th><th>Problems</th></tr>
            </thead>
            <tbody>
              {p.rows.map((r) => {
                const errs = errorsOf(r);
                return (
                  <tr key={r.line} className={errs.length ? "row-bad" : ""}>
                    <td>{r.line}</td><td><code>{r.device_id}</code></td><td>{r.name}</td><td>{r.site}</td><td>{r.tags.join(", ")}</td><td>{r.status}</td>
                    <td>{errs.join("; ") || "—"}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <div className="row">
            <button className="btn primary" disabled={busy || p.bad > 0 || (result !== null && "imported" in result)} onClick={submit}>
              Import {p.rows.length} device(s)
            </button>
          </div>
        </>
      )}
      {result && "imported" in result && (
        <div className="card" role="status" data-testid="import-done">
          <p><strong>{result.imported} device(s) imported.</strong></p>
          {!tokens && (
            <button className="btn" disabled={busy} onClick={issueTokens}>
              {busy ? "Making tokens…" : "Make a token for each"}
            </button>
          )}
        </div>
      )}
      {result && "rejected" in result && <div className="error" role="alert">{result.message}</div>}
      {result && "refused" in result && <ErrorBox error={result.refused} />}
      {tokens && (
        <div className="secret" role="dialog" aria-label="Device tokens">
          <p><strong>{tokens.length} token(s), shown once.</strong> Download them now: Pulse keeps only hashes.</p>
          <pre data-testid="import-tokens">{tokens.map((t) => `${t.device_id},${t.token}`).join("\n")}</pre>
          <div className="row">
            <button className="btn primary" onClick={() => download("pulse-device-tokens.csv", csvOf(["device_id", "token"], tokens.map((t) => [t.device_id, t.token])))}>
              Download CSV
            </button>
            <button className="btn" onClick={() => setTokens([])}>I have stored them</button>
          </div>
        </div>
      )}
    </>
  );
}
