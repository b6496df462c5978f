// Quarantine: the messages ingest refused, newest first, filtered by code and device (in the URL),
// paged on the server. The raw payload is shown as text (React escapes it; never rendered as HTML)
// or, when it is not UTF-8, as base64. Tenant admins re-submit one through ingest again once its
// device is fixed; the answer (stored, or refused again with ingest's code) is shown in the row.
import { useState } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError } from "../../api";
import { useAccess } from "../../lib/access";
import { usePaging, type Page } from "../../paging";
import { navigate, useLocation } from "../../router";
import type { Quarantined } from "../../types";
import { Empty, ErrorBox, Loading, Pager, Time } from "../../components/ui";

export function QuarantinePage() {
  const { query } = useLocation();
  const { canWrite } = useAccess();
  const f = { code: query.get("code") ?? "", device_id: query.get("device_id") ?? "" };
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["quarantine", f, paging.cursor],
    queryFn: () =>
      api<Page<Quarantined>>("/api/v1/quarantine", {
        query: { code: f.code || undefined, device_id: f.device_id || undefined, limit: 50, cursor: paging.cursor },
      }),
    placeholderData: keepPreviousData,
  });
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate("/quarantine" + (s ? "?" + s : ""), { replace: true });
  };
  return (
    <>
      <h1>Quarantine</h1>
      <p className="muted">Messages ingest refused, kept with their reason and raw bytes. Fix the device (register it, re-enable it, correct its profile), then re-submit.</p>
      <div className="filters" role="search">
        <input aria-label="Code" placeholder="code, e.g. sync.unknown_device" defaultValue={f.code} onKeyDown={(e) => e.key === "Enter" && set("code", e.currentTarget.value.trim())} onBlur={(e) => set("code", e.currentTarget.value.trim())} />
        <input aria-label="Device" placeholder="device id" defaultValue={f.device_id} onKeyDown={(e) => e.key === "Enter" && set("device_id", e.currentTarget.value.trim())} onBlur={(e) => set("device_id", e.currentTarget.value.trim())} />
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title={f.code || f.device_id ? "Nothing matches these filters." : "Nothing in quarantine."} />
      ) : (
        <>
          <table className="table dense" data-testid="quarantine-table" aria-busy={q.isFetching}>
            <thead><tr><th>Received</th><th>Device</th><th>Source</th><th>Code</th><th>Reason</th><th>Raw</th><th></th></tr></thead>
            <tbody>
              {q.data.items.map((m) => <Row key={m.id} m={m} canWrite={canWrite} />)}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="messages" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}

function Row({ m, canWrite }: { m: Quarantined; canWrite: boolean }) {
  const client = useQueryClient();
  const [outcome, setOutcome] = useState<string | null>(null);
  const resubmit = useMutation({
    mutationFn: () => api<{ accepted: number }>(`/api/v1/quarantine/${m.id}/resubmit`, { method: "POST" }),
    onSuccess: (r) => {
      setOutcome(`stored (${r.accepted})`);
      client.invalidateQueries({ queryKey: ["quarantine"] });
    },
    onError: (e) => {
      const code = e instanceof ApiError ? e.code : "error";
      const ingest = e instanceof ApiError && typeof e.body.ingest_code === "string" ? `: ${e.body.ingest_code}` : "";
      setOutcome(`${code}${ingest} — ${e.message}`);
    },
  });
  return (
    <tr data-testid="quarantined" data-id={m.id}>
      <td><Time value={m.received_at} /></td>
      <td><code>{m.device_id ?? "—"}</code></td>
      <td>{m.source}</td>
      <td><code>{m.code}</code></td>
      <td className="small">{m.reason}</td>
      <td>
        <span className="tag">{m.raw_encoding === "base64" ? "binary (base64)" : "text"}</span>
        <pre className="raw" data-testid="raw">{m.raw}{m.raw_truncated ? "…" : ""}</pre>
      </td>
      <td>
        {m.resubmitted_at ? (
          <span className="muted" data-testid="resubmitted">re-submitted by {m.resubmitted_by} <Time value={m.resubmitted_at} /></span>
        ) : canWrite ? (
          <button className="btn small" disabled={resubmit.isPending} onClick={() => resubmit.mutate()}>Re-submit</button>
        ) : null}
        {outcome && <div className="small" role="status" data-testid="resubmit-outcome">{outcome}</div>}
      </td>
    </tr>
  );
}
