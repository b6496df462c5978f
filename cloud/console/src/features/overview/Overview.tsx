import { useQuery } from "@tanstack/react-query";
import { api, apiPage } from "../../api";
import { Link } from "../../components/Link";
import { SEVERITIES, type Alert, type FleetSummary } from "../../types";
import { ago, Empty, ErrorBox, Loading, SeverityBadge } from "../../components/ui";

const STATUSES = ["active", "provisioned", "disabled", "decommissioned"] as const;
const STATES = ["online", "stale", "offline", "unreachable", "never_seen"] as const;

export function OverviewPage() {
  const q = useQuery({ queryKey: ["fleet-summary"], queryFn: () => api<FleetSummary>("/api/v1/fleet/summary"), refetchInterval: 30_000 });
  const changes = useQuery({
    queryKey: ["device-states", "recent"],
    queryFn: () => api<{ device_id: string; status: string; changed_at: string; reason: { text?: string } }[]>("/api/v1/device-states", { query: { recent: 10 } }),
    refetchInterval: 30_000,
  });
  const active = useQuery({
    queryKey: ["alerts", "overview"],
    queryFn: () => apiPage<Alert>("/api/v1/alerts", { query: { state: ["open", "acknowledged"], limit: 10 } }),
    refetchInterval: 30_000,
  });
  return (
    <>
      <h1>Fleet overview</h1>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : (
        <>
          <div className="kpis" data-testid="kpis">
            <Link to="/devices" className="kpi">
              <span className="kpi-value">{q.data.devices}</span>
              <span className="kpi-label">devices</span>
            </Link>
            {STATUSES.map((s) => (
              <Link key={s} to={`/devices?status=${s}`} className={`kpi kpi-${s}`}>
                <span className="kpi-value" data-testid={`kpi-${s}`}>{q.data.devices_by_status[s]}</span>
                <span className="kpi-label">{s}</span>
              </Link>
            ))}
            <Link to="/sites" className="kpi">
              <span className="kpi-value" data-testid="kpi-sites">{q.data.sites}</span>
              <span className="kpi-label">sites</span>
            </Link>
          </div>
          {q.data.devices_by_state && q.data.open_alerts && q.data.gateways && (
            <div className="kpis" data-testid="kpis-health">
              {STATES.map((s) => (
                <Link key={s} to={`/devices?state=${s}`} className={`kpi kpi-state-${s}`}>
                  <span className="kpi-value" data-testid={`kpi-${s}`}>{q.data.devices_by_state![s] ?? 0}</span>
                  <span className="kpi-label">{s === "never_seen" ? "never seen" : s}</span>
                </Link>
              ))}
              {SEVERITIES.map((s) => (
                <Link key={s} to={`/alerts?severity=${s}`} className={`kpi kpi-sev-${s}`}>
                  <span className="kpi-value" data-testid={`kpi-alerts-${s}`}>{q.data.open_alerts![s] ?? 0}</span>
                  <span className="kpi-label">{s} open</span>
                </Link>
              ))}
              <Link to="/gateways" className="kpi">
                <span className="kpi-value">
                  {q.data.gateways.online}/{q.data.gateways.online + q.data.gateways.offline}
                </span>
                <span className="kpi-label">gateways online</span>
              </Link>
            </div>
          )}
        </>
      )}
      <section className="card">
        <div className="page-head">
          <h2>Active alerts</h2>
          <Link to="/alerts">all alerts →</Link>
        </div>
        {active.isPending ? (
          <Loading />
        ) : active.isError ? (
          <ErrorBox error={active.error} retry={() => active.refetch()} />
        ) : active.data.items.length === 0 ? (
          <Empty title="No open alerts." />
        ) : (
          <table className="table dense" data-testid="overview-alerts">
            <tbody>
              {active.data.items.map((a) => (
                <tr key={a.id}>
                  <td><SeverityBadge severity={a.severity} /></td>
                  <td><code>{a.device_id}</code></td>
                  <td>{a.explanation.text}</td>
                  <td>{a.state}</td>
                  <td>{ago(a.opened_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <section className="card">
        <h2>Recently changed devices</h2>
        {changes.isPending ? (
          <Loading />
        ) : changes.isError ? (
          <ErrorBox error={changes.error} retry={() => changes.refetch()} />
        ) : changes.data.length === 0 ? (
          <Empty title="No state changes yet.">Devices show here when a heartbeat rule finds them online, stale, offline or unreachable.</Empty>
        ) : (
          <table className="table dense" data-testid="overview-changes">
            <tbody>
              {changes.data.map((c) => (
                <tr key={c.device_id}>
                  <td><Link to={`/devices?q=${encodeURIComponent(c.device_id)}`}><code>{c.device_id}</code></Link></td>
                  <td><span className={`badge badge-state-${c.status}`}>{c.status}</span></td>
                  <td className="muted">{typeof c.reason?.text === "string" ? c.reason.text : ""}</td>
                  <td>{ago(c.changed_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </>
  );
}
