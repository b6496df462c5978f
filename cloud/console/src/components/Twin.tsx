// The device twin and commands on the device page: desired / reported / delta side by side (and
// one row per setting), an editor for desired with version conflict handling, the commands list
// with their states and a form to send one. API: API-CONTRACT.md (cloud/api/twin.py).
import { useEffect, useMemo, useState } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "../api";
import { useAccess } from "../lib/access";
import { live } from "../live";
import { usePaging, type Page } from "../paging";
import { mergePatch, parseDesired, twinRows, type Doc, type Json } from "../twin";
import type { Command, Device, TwinDoc } from "../types";
import { ago, Empty, ErrorBox, Loading, Pager, Time } from "./ui";

const show = (v: Json | undefined) => (v === undefined ? "" : JSON.stringify(v));

function unavailable(e: unknown): boolean {
  return e instanceof ApiError && e.status === 404 && e.code !== "api.not_found";
}

export function TwinSection({ device }: { device: Device }) {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const key = ["twin", device.id];
  const twin = useQuery({ queryKey: key, queryFn: () => api<TwinDoc>(`/api/v1/devices/${encodeURIComponent(device.device_id)}/twin`), refetchInterval: 10_000 }); // live frames cover API and gateway writes; polling covers the rest
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState("");
  const [base, setBase] = useState<{ version: number; desired: Doc } | null>(null);
  const [conflict, setConflict] = useState<TwinDoc | null>(null);
  const parsed = useMemo(() => parseDesired(text), [text]);
  // the live socket says when the twin changed (the device reported, someone else wrote): reload it
  useEffect(
    () =>
      live.onChange((m) => {
        if (m.device === device.id && m.type === "twin") client.invalidateQueries({ queryKey: ["twin", device.id] });
      }),
    [device.id, client],
  );

  const save = useMutation({
    mutationFn: ({ from, version, to }: { from: Doc; version: number; to: Doc }) =>
      api<TwinDoc>(`/api/v1/devices/${encodeURIComponent(device.device_id)}/twin`, {
        method: "PATCH",
        body: { state: { desired: Object.keys(to).length === 0 ? null : mergePatch(from, to) }, version },
      }),
    onSuccess: (doc) => {
      client.setQueryData(key, doc);
      setEditing(false);
      setConflict(null);
    },
    onError: async (e) => {
      if (e instanceof ApiError && e.code === "twin.version_conflict") {
        const current = await api<TwinDoc>(`/api/v1/devices/${encodeURIComponent(device.device_id)}/twin`);
        client.setQueryData(key, current);
        setConflict(current);
      }
    },
  });

  const startEdit = () => {
    if (!twin.data) return;
    setBase({ version: twin.data.version, desired: twin.data.state.desired as Doc });
    setText(JSON.stringify(twin.data.state.desired, null, 2));
    setConflict(null);
    save.reset();
    setEditing(true);
  };
  const submit = () => {
    if (!parsed.ok || !base) return;
    save.mutate({ from: base.desired, version: base.version, to: parsed.doc });
  };
  const reapply = () => {
    if (!parsed.ok || !conflict) return;
    const current = { version: conflict.version, desired: conflict.state.desired as Doc };
    setBase(current);
    save.mutate({ from: current.desired, version: current.version, to: parsed.doc });
  };

  if (twin.isPending) return <section className="card"><h2>Twin</h2><Loading /></section>;
  if (twin.isError)
    return (
      <section className="card">
        <h2>Twin</h2>
        {unavailable(twin.error) ? <Empty title="The twin API is not available on this cloud." /> : <ErrorBox error={twin.error} retry={() => twin.refetch()} />}
      </section>
    );
  const s = twin.data.state;
  const rows = twinRows(s.desired as Doc, s.reported as Doc, s.delta as Doc);
  const pending = Object.keys(s.delta).length;
  return (
    <section className="card" data-testid="twin">
      <div className="page-head">
        <h2>Twin</h2>
        <span className="muted small" data-testid="twin-version">version {twin.data.version}</span>
        {pending > 0 ? <span className="badge badge-pending" data-testid="twin-pending">{pending} pending</span> : <span className="badge badge-active">in sync</span>}
        <span className="spacer" />
        {canWrite && !editing && device.status !== "decommissioned" && <button className="btn small" onClick={startEdit}>Edit desired</button>}
      </div>
      <div className="grid3">
        {(["desired", "reported", "delta"] as const).map((part) => (
          <div key={part}>
            <h3>{part}</h3>
            <pre className="json-view" data-testid={`twin-${part}`}>{JSON.stringify(s[part], null, 2)}</pre>
          </div>
        ))}
      </div>
      {rows.length > 0 ? (
        <table className="table dense" data-testid="twin-rows">
          <thead><tr><th>Setting</th><th>Desired</th><th>Reported</th><th>State</th></tr></thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.path} className={`twin-${r.status}`}>
                <td><code>{r.path}</code></td>
                <td><code>{show(r.desired)}</code></td>
                <td><code>{show(r.reported)}</code></td>
                <td><span className={`badge badge-twin-${r.status}`}>{r.status}</span></td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <Empty title="Empty twin.">Nothing desired yet and the device has reported nothing.</Empty>
      )}
      {editing && (
        <form
          className="twin-editor"
          aria-label="Edit desired state"
          onSubmit={(e) => {
            e.preventDefault();
            submit();
          }}
        >
          <h3>Desired state (JSON)</h3>
          <textarea aria-label="Desired state JSON" className={`json ${parsed.ok ? "" : "invalid"}`} rows={10} value={text} onChange={(e) => setText(e.target.value)} spellCheck={false} />
          {!parsed.ok && <div className="field-error">{parsed.error}</div>}
          {conflict && (
            <div className="conflict" role="alert" data-testid="twin-conflict">
              <p>
                <strong>Someone else changed this twin</strong> (now version {conflict.version}). Their desired state is below; your edit is
                still in the editor. Re-apply it on top of version {conflict.version}, or discard it.
              </p>
              <pre className="json-view">{JSON.stringify(conflict.state.desired, null, 2)}</pre>
              <div className="row">
                <button type="button" className="btn primary" onClick={reapply} disabled={!parsed.ok || save.isPending}>Re-apply my edit</button>
                <button type="button" className="btn" onClick={() => { setEditing(false); setConflict(null); }}>Discard my edit</button>
              </div>
            </div>
          )}
          {save.isError && !(save.error instanceof ApiError && save.error.code === "twin.version_conflict") && <ErrorBox error={save.error} />}
          {!conflict && (
            <div className="row">
              <button className="btn primary" disabled={!parsed.ok || save.isPending}>Save desired</button>
              <button type="button" className="btn" onClick={() => setEditing(false)}>Cancel</button>
            </div>
          )}
        </form>
      )}
    </section>
  );
}

const STATES = ["", "queued", "delivered", "sent", "succeeded", "failed", "expired"];

export function CommandsSection({ device }: { device: Device }) {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const [state, setState] = useState("");
  const paging = usePaging({ state });
  const q = useQuery({
    queryKey: ["commands", device.id, state, paging.cursor],
    queryFn: () => api<Page<Command>>(`/api/v1/devices/${encodeURIComponent(device.device_id)}/commands`, { query: { state, limit: 20, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
    refetchInterval: 15_000,
  });
  const [form, setForm] = useState({ name: "", params: "{}", expires: "3600" });
  const params = useMemo(() => parseDesired(form.params), [form.params]);
  const send = useMutation({
    mutationFn: () =>
      api<Command>(`/api/v1/devices/${encodeURIComponent(device.device_id)}/commands`, {
        method: "POST",
        body: { name: form.name.trim(), params: params.ok ? params.doc : {}, expires_in_s: Number(form.expires) },
      }),
    onSuccess: () => {
      setForm({ ...form, name: "", params: "{}" });
      client.invalidateQueries({ queryKey: ["commands", device.id] });
    },
  });
  useEffect(() => paging.reset(), [device.id]); // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(
    () =>
      live.onChange((m) => {
        if (m.device === device.id && m.type === "command") client.invalidateQueries({ queryKey: ["commands", device.id] });
      }),
    [device.id, client],
  );
  return (
    <section className="card" data-testid="commands">
      <div className="page-head">
        <h2>Commands</h2>
        <select aria-label="Command state" value={state} onChange={(e) => setState(e.target.value)}>
          {STATES.map((s) => <option key={s} value={s}>{s || "any state"}</option>)}
        </select>
      </div>
      {canWrite && device.status !== "decommissioned" && (
        <form
          className="form-row"
          aria-label="Send command"
          onSubmit={(e) => {
            e.preventDefault();
            send.mutate();
          }}
        >
          <input required aria-label="Command name" placeholder="command, e.g. reboot" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
          <input aria-label="Command parameters" className={params.ok ? "" : "invalid"} placeholder='{"delay_s": 5}' value={form.params} onChange={(e) => setForm({ ...form, params: e.target.value })} />
          <select aria-label="Expires in" value={form.expires} onChange={(e) => setForm({ ...form, expires: e.target.value })}>
            <option value="300">expires in 5 min</option>
            <option value="3600">expires in 1 hour</option>
            <option value="86400">expires in 1 day</option>
            <option value="604800">expires in 7 days</option>
          </select>
          <button className="btn primary" disabled={send.isPending || !params.ok}>Send command</button>
          {!params.ok && <span className="field-error">{params.error}</span>}
        </form>
      )}
      {send.isError && <ErrorBox error={send.error} />}
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        unavailable(q.error) ? <Empty title="The commands API is not available on this cloud." /> : <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title={state ? `No ${state} commands.` : "No commands sent yet."} />
      ) : (
        <>
          <table className="table dense" data-testid="commands-table">
            <thead><tr><th>Command</th><th>Params</th><th>State</th><th>Sent</th><th>Updated</th><th>Expires</th><th>Result</th></tr></thead>
            <tbody>
              {q.data.items.map((c) => (
                <tr key={c.id}>
                  <td><code>{c.name}</code></td>
                  <td><code>{JSON.stringify(c.params)}</code></td>
                  <td><span className={`badge badge-cmd-${c.state}`}>{c.state}</span></td>
                  <td><Time value={c.created} /></td>
                  <td>{ago(c.updated)}</td>
                  <td><Time value={c.expires} /></td>
                  <td>{c.error ? <span className="bad">{c.error}</span> : c.result ? <code>{JSON.stringify(c.result)}</code> : <span className="muted">—</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="commands" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </section>
  );
}
