import { useQuery } from "@tanstack/react-query";
import { api } from "../api";
import { Link } from "../App";
import type { FleetSummary } from "../types";
import { ErrorBox, Loading } from "../components/ui";

const STATUSES = ["active", "provisioned", "disabled", "decommissioned"] as const;

export function OverviewPage() {
  const q = useQuery({ queryKey: ["fleet-summary"], queryFn: () => api<FleetSummary>("/api/v1/fleet/summary"), refetchInterval: 30_000 });
  return (
    <>
      <h1>Fleet overview</h1>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : (
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
      )}
      <p className="muted note">
        Online/stale/offline counts, open alerts by severity and gateway health join this strip when alerting and
        gateway sync are enabled on this cloud; they are left out rather than shown as zeros.
      </p>
    </>
  );
}
