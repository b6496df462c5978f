// The tenant's audit log (tenant admins): who did what, newest first, paged on the server;
// operators' cross-tenant looks at this tenant's data are marked.
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { usePaging, type Page } from "../../paging";
import { navigate, useLocation } from "../../router";
import type { AuditEntry } from "../../types";
import { Empty, ErrorBox, Loading, Pager, Time } from "../../components/ui";

export function AuditPage() {
  const { query } = useLocation();
  const f = { action: query.get("action") ?? "", actor: query.get("actor") ?? "" };
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["audit", f, paging.cursor],
    queryFn: () => api<Page<AuditEntry>>("/api/v1/audit", { query: { action: f.action, actor: f.actor, limit: 100, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
  });
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate("/audit" + (s ? "?" + s : ""), { replace: true });
  };
  return (
    <>
      <h1>Audit log</h1>
      <div className="filters" role="search">
        <input aria-label="Action" placeholder="action, or a prefix like gateway." defaultValue={f.action} onKeyDown={(e) => e.key === "Enter" && set("action", e.currentTarget.value.trim())} onBlur={(e) => set("action", e.currentTarget.value.trim())} />
        <input aria-label="Actor" placeholder="actor" defaultValue={f.actor} onKeyDown={(e) => e.key === "Enter" && set("actor", e.currentTarget.value.trim())} onBlur={(e) => set("actor", e.currentTarget.value.trim())} />
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title={f.action || f.actor ? "Nothing matches these filters." : "Nothing audited yet."} />
      ) : (
        <>
          <table className="table dense" data-testid="audit-table" aria-busy={q.isFetching}>
            <thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Target</th><th>Detail</th></tr></thead>
            <tbody>
              {q.data.items.map((e) => (
                <tr key={e.id}>
                  <td><Time value={e.at} /></td>
                  <td>{e.actor}{e.bypass && <span className="tag" title="an operator's cross-tenant access">operator</span>}</td>
                  <td><code>{e.action}</code></td>
                  <td>{e.target}</td>
                  <td className="muted small"><code>{Object.keys(e.detail).length ? JSON.stringify(e.detail) : ""}</code></td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="entries" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}
