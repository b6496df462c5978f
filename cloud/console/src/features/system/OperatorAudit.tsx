// The operator audit log (operator-admin): every cross-tenant (bypass) access, with actor, action,
// target and tenant, newest first. Reading it is itself audited.
import { useState } from "react";
import { useInfiniteQuery } from "@tanstack/react-query";
import { apiPage } from "../../api";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";
import type { OperatorAuditEntry } from "./model";

export function OperatorAuditPage() {
  const [actor, setActor] = useState("");
  const [action, setAction] = useState("");
  const [tenant, setTenant] = useState("");
  const [applied, setApplied] = useState({ actor: "", action: "", tenant: "" });
  const q = useInfiniteQuery({
    queryKey: ["operator-audit", applied],
    queryFn: ({ pageParam }) =>
      apiPage<OperatorAuditEntry>("/api/v1/operator/audit", {
        query: { limit: 50, cursor: pageParam || undefined, actor: applied.actor || undefined, action: applied.action || undefined, tenant: applied.tenant || undefined },
      }),
    initialPageParam: "",
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const rows = q.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <>
      <h1>Operator audit log</h1>
      <p className="muted note">Every cross-tenant access by an operator: who, what, which tenant. Tenants see the rows about them in their own audit log.</p>
      <form
        className="filters"
        aria-label="Audit filters"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied({ actor, action, tenant });
        }}
      >
        <input aria-label="Actor" placeholder="actor (local:…)" value={actor} onChange={(e) => setActor(e.target.value)} />
        <input aria-label="Action" placeholder="action, or prefix ending in ." value={action} onChange={(e) => setAction(e.target.value)} />
        <input aria-label="Tenant" placeholder="tenant slug" value={tenant} onChange={(e) => setTenant(e.target.value)} />
        <button className="btn small" type="submit">Filter</button>
      </form>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : rows.length === 0 ? (
        <Empty title="No operator access matches." />
      ) : (
        <>
          <table className="table dense" data-testid="operator-audit">
            <thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Tenant</th><th>Target</th><th>Detail</th></tr></thead>
            <tbody>
              {rows.map((r) => (
                <tr key={r.id}>
                  <td><Time value={r.at} /></td>
                  <td><code>{r.actor}</code></td>
                  <td><code>{r.action}</code></td>
                  <td>{r.tenant_slug ? <code>{r.tenant_slug}</code> : <span className="muted">all</span>}</td>
                  <td className="muted">{r.target}</td>
                  <td className="muted small">{Object.entries(r.detail).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {q.hasNextPage && (
            <button className="btn" onClick={() => q.fetchNextPage()} disabled={q.isFetchingNextPage}>
              {q.isFetchingNextPage ? "Loading…" : "Older entries"}
            </button>
          )}
        </>
      )}
    </>
  );
}
