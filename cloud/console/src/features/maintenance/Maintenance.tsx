// Maintenance windows: a device or a site for which no new alert opens for a while (the API's
// /api/v1/maintenance-windows). Lists the windows that have not ended, marks the ones in effect
// now; tenant admins add one (a device id or a site, start, end, reason) or end one early.
import { useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { useSites } from "../sites/useSites";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";

type Window = { id: string; device_id: string | null; site_id: string | null; starts_at: string; ends_at: string; reason: string; created_by: string; created_at: string };

export function MaintenancePage() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const sites = useSites();
  const q = useQuery({ queryKey: ["maintenance"], queryFn: () => api<Window[]>("/api/v1/maintenance-windows"), refetchInterval: 60_000 });
  const blank = { target: "device", device_id: "", site_id: "", starts_at: "", ends_at: "", reason: "" };
  const [form, setForm] = useState(blank);
  const create = useMutation({
    mutationFn: () =>
      api<Window>("/api/v1/maintenance-windows", {
        method: "POST",
        body: {
          ...(form.target === "device" ? { device_id: form.device_id } : { site_id: form.site_id || null }),
          starts_at: form.starts_at ? new Date(form.starts_at).toISOString() : "",
          ends_at: form.ends_at ? new Date(form.ends_at).toISOString() : "",
          reason: form.reason,
        },
      }),
    onSuccess: () => {
      setForm(blank);
      client.invalidateQueries({ queryKey: ["maintenance"] });
    },
  });
  const end = useMutation({
    mutationFn: (id: string) => api<null>(`/api/v1/maintenance-windows/${id}`, { method: "DELETE" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["maintenance"] }),
  });
  const siteName = (id: string | null) => (sites.data ?? []).find((s) => s.id === id)?.name ?? "…";
  const now = Date.now();
  return (
    <>
      <h1>Maintenance windows</h1>
      <p className="muted">While a window lasts, rules keep evaluating the device (or every device at the site) but no new alert opens for it; alerts already open stay open and can still close.</p>
      {canWrite && (
        <form className="card form-row" aria-label="New maintenance window" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <select aria-label="For" value={form.target} onChange={(e) => setForm({ ...form, target: e.target.value })}>
            <option value="device">a device</option>
            <option value="site">a site</option>
          </select>
          {form.target === "device" ? (
            <input required aria-label="Device id" placeholder="device id" value={form.device_id} onChange={(e) => setForm({ ...form, device_id: e.target.value })} />
          ) : (
            <select required aria-label="Site" value={form.site_id} onChange={(e) => setForm({ ...form, site_id: e.target.value })}>
              <option value="">pick a site</option>
              {(sites.data ?? []).map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}
            </select>
          )}
          <input required aria-label="Starts" type="datetime-local" value={form.starts_at} onChange={(e) => setForm({ ...form, starts_at: e.target.value })} />
          <input required aria-label="Ends" type="datetime-local" value={form.ends_at} onChange={(e) => setForm({ ...form, ends_at: e.target.value })} />
          <input aria-label="Reason" placeholder="reason" value={form.reason} onChange={(e) => setForm({ ...form, reason: e.target.value })} />
          <button className="btn primary" disabled={create.isPending}>Add window</button>
        </form>
      )}
      {create.isError && <ErrorBox error={create.error} />}
      {end.isError && <ErrorBox error={end.error} />}
      {q.isPending ? <Loading /> : q.isError ? <ErrorBox error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No maintenance windows now or ahead." />
      ) : (
        <table className="table dense" data-testid="maintenance-table">
          <thead><tr><th>For</th><th>Starts</th><th>Ends</th><th>Reason</th><th>By</th><th></th></tr></thead>
          <tbody>
            {q.data.map((w) => (
              <tr key={w.id} data-testid="maintenance-window">
                <td>{w.device_id ? <>device <code>{w.device_id}</code></> : <>site {siteName(w.site_id)}</>}{Date.parse(w.starts_at) <= now && <span className="tag" data-testid="in-effect">in effect</span>}</td>
                <td><Time value={w.starts_at} /></td>
                <td><Time value={w.ends_at} /></td>
                <td>{w.reason}</td>
                <td className="muted">{w.created_by}</td>
                <td>{canWrite && <button className="btn small" onClick={() => end.mutate(w.id)}>End</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
