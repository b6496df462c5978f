// Devices: search and filters in the URL, server-side paging by cursor (the API pages by
// device_id), and a create form for tenant admins.
import { useEffect, useMemo, useState, type FormEvent } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { Link } from "../../components/Link";
import { useAccess } from "../../lib/access";
import { useSites } from "../sites/useSites";
import { navigate, useLocation } from "../../router";
import type { Device, DevicePage, Site } from "../../types";
import { Empty, ErrorBox, Loading, StatusBadge, Time } from "../../components/ui";

const PAGE_SIZES = [50, 100, 200, 500];
export const DEVICE_STATES = ["online", "stale", "offline", "unreachable", "never_seen"] as const;
export const STATE_LABEL: Record<string, string> = {
  online: "online", stale: "stale", offline: "offline", unreachable: "unreachable", never_seen: "never seen",
};

export function StateBadge({ state }: { state?: string | null }) {
  const s = state ?? "never_seen";
  return <span className={`badge badge-state-${s}`} data-testid="device-state">{STATE_LABEL[s] ?? s}</span>;
}

export function DevicesPage() {
  const { query } = useLocation();
  const { canWrite } = useAccess();
  const filters = {
    q: query.get("q") ?? "",
    site: query.get("site") ?? "",
    tag: query.get("tag") ?? "",
    status: query.get("status") ?? "",
    state: query.get("state") ?? "",
    sort: query.get("sort") ?? "",
    limit: Number(query.get("limit")) || 100,
  };
  const key = JSON.stringify(filters);
  // the cursor stack belongs to one set of filters: new filters start again at page 1
  const [paging, setPaging] = useState<{ key: string; cursors: (string | null)[] }>({ key, cursors: [null] });
  const cursors = paging.key === key ? paging.cursors : [null];
  const setCursors = (f: (c: (string | null)[]) => (string | null)[]) => setPaging({ key, cursors: f(cursors) });
  const cursor = cursors[cursors.length - 1];
  const sites = useSites();
  const siteName = useMemo(() => new Map((sites.data ?? []).map((s) => [s.id, s.name])), [sites.data]);

  const page = useQuery({
    queryKey: ["devices", filters, cursor],
    queryFn: () =>
      api<DevicePage>("/api/v1/devices", {
        query: { q: filters.q, site: filters.site, tag: filters.tag ? [filters.tag] : undefined, status: filters.status, state: filters.state, sort: filters.sort || undefined, limit: filters.limit, cursor },
      }),
    placeholderData: keepPreviousData,
  });

  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate("/devices" + (s ? "?" + s : ""), { replace: true });
  };

  const [search, setSearch] = useState(filters.q);
  useEffect(() => {
    if (search === filters.q) return;
    const t = setTimeout(() => set("q", search), 300);
    return () => clearTimeout(t);
  }, [search]); // only the typed text starts a search; the URL is the source of truth for the rest

  const [creating, setCreating] = useState(false);
  const filtered = filters.q || filters.site || filters.tag || filters.status || filters.state;

  return (
    <>
      <div className="page-head">
        <h1>Devices</h1>
        {canWrite && (
          <span className="row">
            <Link to="/devices/new" className="btn">Provision…</Link>
            <Link to="/devices/import" className="btn">Import CSV</Link>
            <button className="btn primary" onClick={() => setCreating((c) => !c)}>
              {creating ? "Close" : "New device"}
            </button>
          </span>
        )}
      </div>
      {creating && <NewDevice sites={sites.data ?? []} onDone={() => setCreating(false)} />}
      <div className="filters" role="search">
        <input aria-label="Search devices" placeholder="Search id or name" value={search} onChange={(e) => setSearch(e.target.value)} />
        <select aria-label="Site" value={filters.site} onChange={(e) => set("site", e.target.value)}>
          <option value="">All sites</option>
          {(sites.data ?? []).map((s) => (
            <option key={s.id} value={s.id}>{s.name}</option>
          ))}
        </select>
        <input aria-label="Tag" placeholder="Tag" defaultValue={filters.tag} onKeyDown={(e) => e.key === "Enter" && set("tag", e.currentTarget.value.trim())} onBlur={(e) => set("tag", e.currentTarget.value.trim())} />
        <select aria-label="Status" value={filters.status} onChange={(e) => set("status", e.target.value)}>
          <option value="">Any status</option>
          {["provisioned", "active", "disabled", "decommissioned"].map((s) => (
            <option key={s} value={s}>{s}</option>
          ))}
        </select>
        <select aria-label="State" value={filters.state} onChange={(e) => set("state", e.target.value)}>
          <option value="">Any state</option>
          {DEVICE_STATES.map((s) => (
            <option key={s} value={s}>{STATE_LABEL[s]}</option>
          ))}
        </select>
        <select aria-label="Sort" value={filters.sort} onChange={(e) => set("sort", e.target.value)}>
          <option value="">Sort by device id</option>
          <option value="state">Sort by state (offline first)</option>
          <option value="last_seen">Sort by last seen (longest silent first)</option>
          <option value="-last_seen">Sort by last seen (most recent first)</option>
        </select>
        <select aria-label="Rows per page" value={filters.limit} onChange={(e) => set("limit", e.target.value)}>
          {PAGE_SIZES.map((n) => (
            <option key={n} value={n}>{n} per page</option>
          ))}
        </select>
        {filtered && (
          <button className="btn small" onClick={() => { setSearch(""); navigate("/devices", { replace: true }); }}>
            Clear filters
          </button>
        )}
      </div>
      {page.isPending ? (
        <Loading what="Loading devices" />
      ) : page.isError ? (
        <ErrorBox error={page.error} retry={() => page.refetch()} />
      ) : page.data.items.length === 0 ? (
        filtered ? (
          <Empty title="No devices match these filters." />
        ) : (
          <Empty title="No devices yet.">{canWrite ? "Create one with “New device” or “Provision…”, or import a CSV." : "A tenant admin can register devices."}</Empty>
        )
      ) : (
        <>
          <table className="table dense" data-testid="devices-table" aria-busy={page.isFetching}>
            <thead>
              <tr><th>Device</th><th>Name</th><th>Site</th><th>Tags</th><th>Status</th><th>State</th><th>Last seen</th></tr>
            </thead>
            <tbody>
              {page.data.items.map((d: Device) => (
                <tr key={d.id}>
                  <td><Link to={`/devices/${d.id}`}><code>{d.device_id}</code></Link></td>
                  <td>{d.name}</td>
                  <td>{d.site_id ? siteName.get(d.site_id) ?? "…" : <span className="muted">—</span>}</td>
                  <td>{d.tags.map((t) => <span key={t} className="tag">{t}</span>)}</td>
                  <td><StatusBadge status={d.status} /></td>
                  <td><StateBadge state={d.state} /></td>
                  <td>{d.last_seen_at ? <Time value={d.last_seen_at} /> : <span className="muted">never</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div className="pager">
            <button className="btn small" disabled={cursors.length === 1} onClick={() => setCursors((c) => c.slice(0, -1))}>
              ← Previous
            </button>
            <span className="muted">
              Page {cursors.length} · {page.data.items.length} devices
            </span>
            <button
              className="btn small"
              disabled={!page.data.next_cursor}
              onClick={() => setCursors((c) => [...c, page.data!.next_cursor])}
            >
              Next →
            </button>
          </div>
        </>
      )}
    </>
  );
}

function NewDevice({ sites, onDone }: { sites: Site[]; onDone: () => void }) {
  const client = useQueryClient();
  const [form, setForm] = useState({ device_id: "", name: "", site_id: "", tags: "" });
  const create = useMutation({
    mutationFn: () =>
      api<Device>("/api/v1/devices", {
        method: "POST",
        body: {
          device_id: form.device_id.trim(),
          name: form.name,
          site_id: form.site_id || null,
          tags: form.tags.split(/[\s,]+/).filter(Boolean),
        },
      }),
    onSuccess: (d) => {
      client.invalidateQueries({ queryKey: ["devices"] });
      client.invalidateQueries({ queryKey: ["fleet-summary"] });
      onDone();
      navigate(`/devices/${d.id}`);
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    create.mutate();
  };
  return (
    <form className="card form-row" onSubmit={submit} aria-label="New device">
      <input required placeholder="device id (as the device sends it)" value={form.device_id} onChange={(e) => setForm({ ...form, device_id: e.target.value })} />
      <input placeholder="name" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
      <select value={form.site_id} onChange={(e) => setForm({ ...form, site_id: e.target.value })} aria-label="Site of the new device">
        <option value="">no site</option>
        {sites.map((s) => <option key={s.id} value={s.id}>{s.name}</option>)}
      </select>
      <input placeholder="tags, comma separated" value={form.tags} onChange={(e) => setForm({ ...form, tags: e.target.value })} />
      <button className="btn primary" disabled={create.isPending}>Create</button>
      {create.isError && <ErrorBox error={create.error} />}
    </form>
  );
}
