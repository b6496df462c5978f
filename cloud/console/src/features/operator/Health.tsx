// The tenant health matrix (operators, audited).
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { navigate } from "../../router";
import type { TenantHealth } from "../../types";
import { Spark } from "../system/Platform";
import type { Sparklines } from "../system/model";
import { ago, Empty, ErrorBox, Loading } from "../../components/ui";

function cell(bad: boolean, warn: boolean): string {
  return bad ? "cell-bad" : warn ? "cell-warn" : "cell-ok";
}

export function HealthPage() {
  const q = useQuery({ queryKey: ["tenant-health"], queryFn: () => api<TenantHealth[]>("/api/v1/operator/health"), refetchInterval: 30_000 });
  const sparks = useQuery({
    queryKey: ["tenant-sparklines"],
    queryFn: () => api<Sparklines>("/api/v1/operator/health/sparklines", { query: { hours: 24 } }),
    refetchInterval: 60_000,
  });
  const lines = new Map((sparks.data?.tenants ?? []).map((t) => [t.tenant_id, t]));
  return (
    <>
      <h1>Tenant health</h1>
      <p className="muted note">One row per tenant; red needs attention. Every view is written to the audit log.</p>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No tenants yet." />
      ) : (
        <table className="table matrix" data-testid="health-matrix">
          <thead>
            <tr><th>Tenant</th><th className="num">Devices</th><th className="num">Online</th><th className="num">Offline</th><th className="num">Open alerts</th><th className="num">Critical</th><th className="num">Gateways offline</th><th>Last reading</th><th>Readings, 24 h</th><th>Alerts, 24 h</th></tr>
          </thead>
          <tbody>
            {q.data.map((t) => {
              const silent = !t.last_ingest_at || Date.now() - new Date(t.last_ingest_at).getTime() > 3_600_000;
              return (
                <tr key={t.id}>
                  <td><a href={`/app/operator/devices?tenant=${t.slug}`} onClick={(e) => { e.preventDefault(); navigate(`/operator/devices?tenant=${t.slug}`); }}><code>{t.slug}</code></a> <span className="muted">{t.name}</span></td>
                  <td className="num">{t.devices}</td>
                  <td className="num">{t.online}</td>
                  <td className={`num ${cell(t.devices > 0 && t.offline / t.devices > 0.2, t.offline > 0)}`}>{t.offline}</td>
                  <td className={`num ${cell(false, t.open_alerts > 0)}`}>{t.open_alerts}</td>
                  <td className={`num ${cell(t.critical_alerts > 0, false)}`}>{t.critical_alerts}</td>
                  <td className={`num ${cell(t.gateways_offline > 0, false)}`}>{t.gateways_offline}/{t.gateways}</td>
                  <td className={t.devices > 0 ? cell(false, silent) : ""}>{ago(t.last_ingest_at)}</td>
                  <td data-testid={`spark-readings-${t.slug}`}>{lines.has(t.id) && <Spark values={lines.get(t.id)!.readings} label={`readings per hour of ${t.slug}`} />}</td>
                  <td data-testid={`spark-alerts-${t.slug}`}>{lines.has(t.id) && <Spark values={lines.get(t.id)!.alerts} label={`alerts per hour of ${t.slug}`} bad />}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </>
  );
}
