import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import type { Tenant } from "../../types";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";
import { UsersTable } from "../users/Users";

function NewTenant() {
  const client = useQueryClient();
  const [slug, setSlug] = useState("");
  const [name, setName] = useState("");
  const create = useMutation({
    mutationFn: () => api<Tenant>("/api/v1/operator/tenants", { method: "POST", body: { slug: slug.trim(), name: name.trim() } }),
    onSuccess: () => {
      setSlug("");
      setName("");
      client.invalidateQueries({ queryKey: ["tenants"] });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    create.mutate();
  };
  return (
    <section className="card">
      <form className="form-row" onSubmit={submit} aria-label="New tenant">
        <input required aria-label="Slug" placeholder="slug (a-z, 0-9, -)" pattern={"[a-z0-9][a-z0-9\\-]{0,62}"} value={slug} onChange={(e) => setSlug(e.target.value)} />
        <input required aria-label="Tenant name" placeholder="name" value={name} onChange={(e) => setName(e.target.value)} />
        <button className="btn primary" disabled={create.isPending}>Create tenant</button>
      </form>
      {create.error && <ErrorBox error={create.error} />}
      <p className="muted note">Then open its users and invite its first tenant admin.</p>
    </section>
  );
}

export function TenantsPage() {
  const { me } = useAccess();
  const q = useQuery({ queryKey: ["tenants"], queryFn: () => api<Tenant[]>("/api/v1/operator/tenants") });
  return (
    <>
      <h1>Tenants</h1>
      <p className="muted note">Operator view across tenants. Every visit is written to the audit log.</p>
      {me.roles.includes("operator-admin") && <NewTenant />}
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No tenants yet" />
      ) : (
        <table className="table">
          <thead>
            <tr><th>Slug</th><th>Name</th><th className="num">Devices</th><th>Created</th><th /></tr>
          </thead>
          <tbody>
            {q.data.map((t) => (
              <tr key={t.id}>
                <td><code>{t.slug}</code></td>
                <td>{t.name}</td>
                <td className="num">{t.devices}</td>
                <td><Time value={t.created_at} /></td>
                <td><Link to={`/operator/tenants/${t.id}/users`}>Users</Link></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

export function TenantUsersPage({ id }: { id: string }) {
  const { me } = useAccess();
  const q = useQuery({ queryKey: ["tenants"], queryFn: () => api<Tenant[]>("/api/v1/operator/tenants") });
  const tenant = q.data?.find((t) => t.id === id);
  return (
    <>
      <h1>Users of {tenant ? tenant.name : "tenant"}</h1>
      <p className="muted note">
        <Link to="/operator/tenants">All tenants</Link> · Operator view: every visit and change is written to the audit log. Operator admins
        invite, change and remove; operators look.
      </p>
      <UsersTable base={`/api/v1/operator/tenants/${id}/users`} canChange={me.roles.includes("operator-admin")} selfId={null} />
    </>
  );
}
