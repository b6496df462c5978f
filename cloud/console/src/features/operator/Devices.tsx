// Every tenant's devices (operators, audited).
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { usePaging, type Page } from "../../paging";
import type { OperatorDevice } from "../../types";
import { ago, Empty, ErrorBox, Loading, Pager } from "../../components/ui";
import { useFilters } from "./useFilters";

export function OperatorDevicesPage() {
  const [f, set] = useFilters("/operator/devices", ["tenant", "q", "state"]);
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["op-devices", f, paging.cursor],
    queryFn: () => api<Page<OperatorDevice>>("/api/v1/operator/devices", { query: { ...f, limit: 100, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
  });
  return (
    <>
      <h1>All devices</h1>
      <p className="muted note">Devices of every tenant. Each page you open is written to the audit log.</p>
      <div className="filters" role="search">
        <input aria-label="Tenant" placeholder="tenant slug" defaultValue={f.tenant} onKeyDown={(e) => e.key === "Enter" && set("tenant", e.currentTarget.value.trim())} onBlur={(e) => set("tenant", e.currentTarget.value.trim())} />
        <input aria-label="Search devices" placeholder="device id or name" defaultValue={f.q} onKeyDown={(e) => e.key === "Enter" && set("q", e.currentTarget.value.trim())} onBlur={(e) => set("q", e.currentTarget.value.trim())} />
        <select aria-label="State" value={f.state} onChange={(e) => set("state", e.target.value)}>
          <option value="">any state</option>
          {["online", "stale", "offline", "unreachable"].map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title="No devices match." />
      ) : (
        <>
          <table className="table dense" data-testid="op-devices-table" aria-busy={q.isFetching}>
            <thead><tr><th>Tenant</th><th>Device</th><th>Name</th><th>Status</th><th>State</th><th>Updated</th></tr></thead>
            <tbody>
              {q.data.items.map((d) => (
                <tr key={d.id}>
                  <td><code>{d.tenant_slug}</code></td>
                  <td><code>{d.device_id}</code></td>
                  <td>{d.name}</td>
                  <td><span className={`badge badge-${d.status}`}>{d.status}</span></td>
                  <td>{d.state ? <span className={`badge badge-state-${d.state}`}>{d.state}</span> : <span className="muted">—</span>}</td>
                  <td>{ago(d.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="devices" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}
