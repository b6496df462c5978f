// Every tenant's alerts (operators, audited).
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { usePaging, type Page } from "../../paging";
import { SEVERITIES, type OperatorAlert } from "../../types";
import { ago, Empty, ErrorBox, Loading, Pager, SeverityBadge } from "../../components/ui";
import { useFilters } from "./useFilters";

export function OperatorAlertsPage() {
  const [f, set] = useFilters("/operator/alerts", ["tenant", "state", "severity"]);
  const paging = usePaging(f);
  const q = useQuery({
    queryKey: ["op-alerts", f, paging.cursor],
    queryFn: () =>
      api<Page<OperatorAlert>>("/api/v1/operator/alerts", {
        query: { tenant: f.tenant, state: f.state || undefined, severity: f.severity || undefined, limit: 100, cursor: paging.cursor },
      }),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
  });
  return (
    <>
      <h1>All alerts</h1>
      <p className="muted note">Alerts of every tenant, newest first. Each page you open is written to the audit log.</p>
      <div className="filters" role="search">
        <input aria-label="Tenant" placeholder="tenant slug" defaultValue={f.tenant} onKeyDown={(e) => e.key === "Enter" && set("tenant", e.currentTarget.value.trim())} onBlur={(e) => set("tenant", e.currentTarget.value.trim())} />
        <select aria-label="State" value={f.state} onChange={(e) => set("state", e.target.value)}>
          <option value="">any state</option>
          {["open", "acknowledged", "closed"].map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
        <select aria-label="Severity" value={f.severity} onChange={(e) => set("severity", e.target.value)}>
          <option value="">any severity</option>
          {SEVERITIES.map((s) => <option key={s} value={s}>{s}</option>)}
        </select>
      </div>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.items.length === 0 ? (
        <Empty title="No alerts match." />
      ) : (
        <>
          <table className="table dense" data-testid="op-alerts-table" aria-busy={q.isFetching}>
            <thead><tr><th>Tenant</th><th>Severity</th><th>Device</th><th>Rule</th><th>Why</th><th>State</th><th>Opened</th></tr></thead>
            <tbody>
              {q.data.items.map((a) => (
                <tr key={a.id}>
                  <td><code>{a.tenant_slug}</code></td>
                  <td><SeverityBadge severity={a.severity} /></td>
                  <td><code>{a.device_id}</code></td>
                  <td><code>{a.rule_id}</code></td>
                  <td>{a.explanation.text}</td>
                  <td><span className={`badge badge-alert-${a.state}`}>{a.state}</span></td>
                  <td title={a.opened_at}>{ago(a.opened_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={q.data.items.length} what="alerts" hasNext={!!q.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(q.data!.next_cursor)} />
        </>
      )}
    </>
  );
}
