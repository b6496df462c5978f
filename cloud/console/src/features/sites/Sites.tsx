// Sites: list, create, edit in place, delete (a site's devices stay, without a site).
import { useState, type FormEvent } from "react";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import type { Site } from "../../types";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";
import { useSites } from "../sites/useSites";

type Draft = { name: string; address: string; latitude: string; longitude: string };
const blank: Draft = { name: "", address: "", latitude: "", longitude: "" };

function body(d: Draft) {
  const num = (s: string) => (s.trim() === "" ? null : Number(s));
  return { name: d.name.trim(), address: d.address, latitude: num(d.latitude), longitude: num(d.longitude) };
}

function SiteForm({ initial, label, onSave, onCancel, busy }: { initial: Draft; label: string; onSave: (d: Draft) => void; onCancel?: () => void; busy: boolean }) {
  const [d, setD] = useState(initial);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    onSave(d);
  };
  return (
    <form className="form-row" onSubmit={submit} aria-label={label}>
      <input required aria-label="Site name" placeholder="name" value={d.name} onChange={(e) => setD({ ...d, name: e.target.value })} />
      <input aria-label="Address" placeholder="address" value={d.address} onChange={(e) => setD({ ...d, address: e.target.value })} />
      <input aria-label="Latitude" placeholder="latitude" type="number" step="any" min={-90} max={90} value={d.latitude} onChange={(e) => setD({ ...d, latitude: e.target.value })} />
      <input aria-label="Longitude" placeholder="longitude" type="number" step="any" min={-180} max={180} value={d.longitude} onChange={(e) => setD({ ...d, longitude: e.target.value })} />
      <button className="btn primary" disabled={busy}>{label}</button>
      {onCancel && <button type="button" className="btn" onClick={onCancel}>Cancel</button>}
    </form>
  );
}

export function SitesPage() {
  const { canWrite } = useAccess();
  const sites = useSites();
  const client = useQueryClient();
  const [editing, setEditing] = useState<string | null>(null);
  const refresh = () => {
    client.invalidateQueries({ queryKey: ["sites"] });
    client.invalidateQueries({ queryKey: ["fleet-summary"] });
  };
  const create = useMutation({ mutationFn: (d: Draft) => api<Site>("/api/v1/sites", { method: "POST", body: body(d) }), onSuccess: refresh });
  const update = useMutation({
    mutationFn: ({ id, d }: { id: string; d: Draft }) => api<Site>(`/api/v1/sites/${id}`, { method: "PATCH", body: body(d) }),
    onSuccess: () => {
      setEditing(null);
      refresh();
    },
  });
  const remove = useMutation({ mutationFn: (id: string) => api<void>(`/api/v1/sites/${id}`, { method: "DELETE" }), onSuccess: refresh });
  const failed = create.error ?? update.error ?? remove.error;

  return (
    <>
      <h1>Sites</h1>
      {canWrite && (
        <section className="card">
          <SiteForm key={create.submittedAt} initial={blank} label="Add site" onSave={(d) => create.mutate(d)} busy={create.isPending} />
        </section>
      )}
      {failed && <ErrorBox error={failed} />}
      {sites.isPending ? (
        <Loading />
      ) : sites.isError ? (
        <ErrorBox error={sites.error} retry={() => sites.refetch()} />
      ) : sites.data.length === 0 ? (
        <Empty title="No sites yet.">Sites group devices by where they are installed.</Empty>
      ) : (
        <table className="table" data-testid="sites-table">
          <thead>
            <tr><th>Name</th><th>Address</th><th>Location</th><th>Created</th>{canWrite && <th />}</tr>
          </thead>
          <tbody>
            {sites.data.map((s) =>
              editing === s.id ? (
                <tr key={s.id}>
                  <td colSpan={canWrite ? 5 : 4}>
                    <SiteForm
                      initial={{ name: s.name, address: s.address, latitude: s.latitude?.toString() ?? "", longitude: s.longitude?.toString() ?? "" }}
                      label="Save"
                      onSave={(d) => update.mutate({ id: s.id, d })}
                      onCancel={() => setEditing(null)}
                      busy={update.isPending}
                    />
                  </td>
                </tr>
              ) : (
                <tr key={s.id}>
                  <td><Link to={`/devices?site=${s.id}`}>{s.name}</Link></td>
                  <td>{s.address || <span className="muted">—</span>}</td>
                  <td>{s.latitude !== null && s.longitude !== null ? `${s.latitude.toFixed(4)}, ${s.longitude.toFixed(4)}` : <span className="muted">—</span>}</td>
                  <td><Time value={s.created_at} /></td>
                  {canWrite && (
                    <td className="actions">
                      <button className="btn small" onClick={() => setEditing(s.id)}>Edit</button>
                      <button className="btn small danger" onClick={() => confirm(`Delete site ${s.name}? Its devices stay, without a site.`) && remove.mutate(s.id)}>
                        Delete
                      </button>
                    </td>
                  )}
                </tr>
              ),
            )}
          </tbody>
        </table>
      )}
    </>
  );
}
