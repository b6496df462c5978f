// Users of a tenant: invite by email (a one-time link, mailed and shown once here), change roles,
// disable / enable, a new link (invitation again, or a password reset), remove. Tenant admins see
// their own tenant's; operators the same for any tenant (every visit audited).
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { Empty, ErrorBox, Loading, SecretOnce, StatusBadge, Time } from "../../components/ui";

export type User = {
  id: string;
  email: string;
  display_name: string;
  roles: string[];
  status: "invited" | "active" | "disabled";
  last_sign_in_at: string | null;
  created_at: string;
  created_by: string;
};

type LinkOut = { user: User; kind: "invite" | "reset"; link: string; expires_at: string; mailed: boolean; mail_detail: string };

const ROLES = ["customer", "tenant-admin"] as const;

function InviteForm({ onInvite, busy }: { onInvite: (b: { email: string; roles: string[]; display_name: string }) => void; busy: boolean }) {
  const [email, setEmail] = useState("");
  const [name, setName] = useState("");
  const [role, setRole] = useState<string>("customer");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    onInvite({ email: email.trim(), roles: [role], display_name: name.trim() });
  };
  return (
    <form className="form-row" onSubmit={submit} aria-label="Invite user">
      <input required type="email" aria-label="Email" placeholder="email" value={email} onChange={(e) => setEmail(e.target.value)} />
      <input aria-label="Name" placeholder="name (optional)" value={name} onChange={(e) => setName(e.target.value)} />
      <select aria-label="Role" value={role} onChange={(e) => setRole(e.target.value)}>
        {ROLES.map((r) => (
          <option key={r} value={r}>{r}</option>
        ))}
      </select>
      <button className="btn primary" disabled={busy}>Invite</button>
    </form>
  );
}

function LinkShown({ out, onDone }: { out: LinkOut; onDone: () => void }) {
  const what = out.kind === "invite" ? "Invitation" : "Password-reset link";
  return (
    <SecretOnce token={out.link} onDone={onDone} label={`${what} for ${out.user.email}`}>
      <p>
        <strong>{what} for {out.user.email}</strong>, valid once until <Time value={out.expires_at} />.{" "}
        {out.mailed ? "It was mailed to them; " : `It was not mailed (${out.mail_detail}); `}
        you can also hand it over yourself. It will not be shown again.
      </p>
      <p>
        <a href={out.link} target="_blank" rel="noreferrer" data-testid="open-link">
          Open the link in a new tab
        </a>{" "}
        <span className="muted">(a new tab has its own session: yours stays signed in here)</span>
      </p>
    </SecretOnce>
  );
}

export function UsersTable({ base, canChange, selfId }: { base: string; canChange: boolean; selfId: string | null }) {
  const client = useQueryClient();
  const key = ["users", base];
  const users = useQuery({ queryKey: key, queryFn: () => api<User[]>(base) });
  const [shown, setShown] = useState<LinkOut | null>(null);
  const done = () => client.invalidateQueries({ queryKey: key });
  const invite = useMutation({
    mutationFn: (b: { email: string; roles: string[]; display_name: string }) => api<LinkOut>(`${base}/invitations`, { method: "POST", body: b }),
    onSuccess: (out) => {
      setShown(out);
      done();
    },
  });
  const patch = useMutation({
    mutationFn: ({ id, body }: { id: string; body: Record<string, unknown> }) => api<User>(`${base}/${id}`, { method: "PATCH", body }),
    onSuccess: done,
  });
  const link = useMutation({
    mutationFn: (id: string) => api<LinkOut>(`${base}/${id}/link`, { method: "POST" }),
    onSuccess: (out) => {
      setShown(out);
      done();
    },
  });
  const remove = useMutation({ mutationFn: (id: string) => api<void>(`${base}/${id}`, { method: "DELETE" }), onSuccess: done });
  const failed = invite.error ?? patch.error ?? link.error ?? remove.error;
  return (
    <>
      {canChange && (
        <section className="card">
          <InviteForm key={invite.submittedAt} busy={invite.isPending} onInvite={(b) => invite.mutate(b)} />
        </section>
      )}
      {shown && <LinkShown out={shown} onDone={() => setShown(null)} />}
      {failed && <ErrorBox error={failed} />}
      {users.isPending ? (
        <Loading />
      ) : users.isError ? (
        <ErrorBox error={users.error} retry={() => users.refetch()} />
      ) : users.data.length === 0 ? (
        <Empty title="No users yet.">Invite the first one above.</Empty>
      ) : (
        <table className="table" data-testid="users-table">
          <thead>
            <tr><th>Email</th><th>Name</th><th>Role</th><th>Status</th><th>Last sign-in</th><th>Invited by</th>{canChange && <th />}</tr>
          </thead>
          <tbody>
            {users.data.map((u) => {
              const self = u.id === selfId;
              return (
                <tr key={u.id} data-testid={`user-${u.email}`}>
                  <td>{u.email}{self && <span className="tag">you</span>}</td>
                  <td>{u.display_name || "—"}</td>
                  <td>
                    {canChange && !self ? (
                      <select
                        aria-label={`Role of ${u.email}`}
                        value={u.roles.includes("tenant-admin") ? "tenant-admin" : "customer"}
                        onChange={(e) => patch.mutate({ id: u.id, body: { roles: [e.target.value] } })}
                      >
                        {ROLES.map((r) => (
                          <option key={r} value={r}>{r}</option>
                        ))}
                      </select>
                    ) : (
                      u.roles.join(", ")
                    )}
                  </td>
                  <td><StatusBadge status={u.status} /></td>
                  <td>{u.last_sign_in_at ? <Time value={u.last_sign_in_at} /> : "never"}</td>
                  <td className="muted">{u.created_by || "—"}</td>
                  {canChange && (
                    <td className="actions">
                      {!self && (
                        <button className="btn small" onClick={() => patch.mutate({ id: u.id, body: { disabled: u.status !== "disabled" } })}>
                          {u.status === "disabled" ? "Enable" : "Disable"}
                        </button>
                      )}
                      {u.status !== "disabled" && (
                        <button className="btn small" onClick={() => link.mutate(u.id)}>
                          {u.status === "invited" ? "New invitation" : "Reset password"}
                        </button>
                      )}
                      {!self && (
                        <button
                          className="btn small danger"
                          onClick={() => window.confirm(`Remove ${u.email}? They lose access at once.`) && remove.mutate(u.id)}
                        >
                          Remove
                        </button>
                      )}
                    </td>
                  )}
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </>
  );
}

export function UsersPage() {
  const { me, canWrite } = useAccess();
  return (
    <>
      <h1>Users</h1>
      <p className="muted note">
        People who sign in to this tenant. Customers read; tenant admins also change things. Every change here is written to the audit log;
        disabling or removing someone ends their sessions at once.
      </p>
      <UsersTable base="/api/v1/users" canChange={canWrite} selfId={me.via === "local" ? me.subject : null} />
    </>
  );
}
