import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import type { Tenant } from "../../types";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";

export function TenantsPage() {
  const q = useQuery({ queryKey: ["tenants"], queryFn: () => api<Tenant[]>("/api/v1/operator/tenants") });
  return (
    <>
      <h1>Tenants</h1>
      <p className="muted note">Operator view across tenants. Every visit is written to the audit log.</p>
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No tenants yet" />
      ) : (
        <table className="table">
          <thead>
            <tr><th>Slug</th><th>Name</th><th className="num">Devices</th><th>Created</th></tr>
          </thead>
          <tbody>
            {q.data.map((t) => (
              <tr key={t.id}>
                <td><code>{t.slug}</code></td>
                <td>{t.name}</td>
                <td className="num">{t.devices}</td>
                <td><Time value={t.created_at} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
