// Gateways: status, how far behind each one is (backlog and its age), last sync, bytes sent,
// certificate expiry; create one (its enrollment token is shown once), new token, revoke.
import { useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import type { EnrollmentToken, Gateway } from "../../types";
import { ago, bytes, Empty, ErrorBox, Loading, SecretOnce, StatusBadge, Time, until } from "../../components/ui";
import { useSites } from "../sites/useSites";
import { ConnectorsPanel } from "./Connectors";

const WEEK = 7 * 86_400_000;

export function backlogOf(g: Gateway): number {
  return Object.values(g.backlog).reduce((a, b) => a + b, 0);
}

export function GatewaysPage() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const q = useQuery({ queryKey: ["gateways"], queryFn: () => api<Gateway[]>("/api/v1/gateways"), refetchInterval: 30_000 });
  const sites = useSites();
  const siteName = new Map((sites.data ?? []).map((s) => [s.id, s.name]));
  const [token, setToken] = useState<{ name: string; token: EnrollmentToken } | null>(null);
  const [form, setForm] = useState({ name: "", site_id: "" });
  const [polled, setPolled] = useState<Gateway | null>(null);
  const done = () => client.invalidateQueries({ queryKey: ["gateways"] });
  const create = useMutation({
    mutationFn: () => api<{ gateway: Gateway; enrollment: EnrollmentToken }>("/api/v1/gateways", { method: "POST", body: { name: form.name.trim(), site_id: form.site_id || null } }),
    onSuccess: (r) => {
      setToken({ name: r.gateway.name, token: r.enrollment });
      setForm({ name: "", site_id: "" });
      done();
    },
  });
  const newToken = useMutation({
    mutationFn: (g: Gateway) => api<EnrollmentToken>(`/api/v1/gateways/${g.id}/enrollment-token`, { method: "POST" }).then((t) => ({ name: g.name, token: t })),
    onSuccess: (r) => setToken(r),
  });
  const revoke = useMutation({ mutationFn: (g: Gateway) => api<Gateway>(`/api/v1/gateways/${g.id}/revoke`, { method: "POST" }), onSuccess: done });
  const failed = create.error ?? newToken.error ?? revoke.error;
  return (
    <>
      <h1>Gateways</h1>
      {canWrite && (
        <form
          className="card form-row"
          aria-label="New gateway"
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <input required aria-label="Gateway name" placeholder="gateway name" value={form.name} maxLength={200} onChange={(e) => setForm({ ...form, name: e.target.value })} />
          <select aria-label="Site of the new gateway" value={form.site_id} onChange={(e) => setForm({ ...form, site_id: e.target.value })}>
            <option value="">no site</option>
            {(sites.data ?? []).map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}
          </select>
          <button className="btn primary" disabled={create.isPending}>Create gateway</button>
        </form>
      )}
      {token && (
        <SecretOnce token={token.token.token} label="Enrollment token" onDone={() => setToken(null)}>
          <p>
            <strong>Enrollment token for {token.name}: copy it now.</strong> It is shown once and works once, until{" "}
            <Time value={token.token.expires_at} />. On the gateway run <code>pulse gateway enroll --token &lt;token&gt;</code>.
          </p>
        </SecretOnce>
      )}
      {failed && <ErrorBox error={failed} />}
      {q.isPending ? (
        <Loading />
      ) : q.isError ? (
        <ErrorBox error={q.error} retry={() => q.refetch()} />
      ) : q.data.length === 0 ? (
        <Empty title="No gateways yet.">{canWrite ? "Create one above; its enrollment token is shown once." : "A tenant admin can add gateways."}</Empty>
      ) : (
        <table className="table dense" data-testid="gateways-table">
          <thead>
            <tr>
              <th>Gateway</th><th>Site</th><th>Status</th><th>Last seen</th><th>Last sync</th><th className="num">Backlog</th><th>Oldest unsynced</th>
              <th className="num">Bytes sent</th><th>Certificate</th><th>Agent</th><th />
            </tr>
          </thead>
          <tbody>
            {q.data.map((g) => {
              const backlog = backlogOf(g);
              const certSoon = g.certificate_expires_at && new Date(g.certificate_expires_at).getTime() - Date.now() < WEEK;
              return (
                <tr key={g.id}>
                  <td>{g.name}</td>
                  <td>{g.site_id ? siteName.get(g.site_id) ?? "…" : <span className="muted">—</span>}</td>
                  <td><StatusBadge status={g.status} /></td>
                  <td title={g.last_seen_at ?? ""}>{ago(g.last_seen_at)}</td>
                  <td title={g.last_batch_at ?? ""}>{ago(g.last_batch_at)}</td>
                  <td className="num" title={Object.entries(g.backlog).map(([k, v]) => `${k}: ${v}`).join(", ")}>{backlog}</td>
                  <td>{g.oldest_unsynced_at ? ago(g.oldest_unsynced_at) : <span className="muted">—</span>}</td>
                  <td className="num">{bytes(g.bytes_received)}</td>
                  <td className={certSoon ? "warn" : ""} title={g.certificate_expires_at ?? ""}>{g.certificate_expires_at ? `expires ${until(g.certificate_expires_at)}` : <span className="muted">none</span>}</td>
                  <td>{g.agent_version ?? <span className="muted">—</span>}</td>
                  <td className="actions">
                    <button className="btn small" onClick={() => setPolled(g)}>Polled devices</button>
                    {canWrite && g.status !== "revoked" && (
                        <>
                          <button className="btn small" onClick={() => newToken.mutate(g)}>New token</button>
                          <button className="btn small danger" onClick={() => confirm(`Revoke ${g.name}? Its certificate stops working at its next request.`) && revoke.mutate(g)}>Revoke</button>
                        </>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {polled && <ConnectorsPanel key={polled.id} gateway={polled} onClose={() => setPolled(null)} />}
    </>
  );
}
