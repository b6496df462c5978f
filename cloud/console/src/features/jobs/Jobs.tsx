// Fleet jobs: the list with progress bars, a form to start one from a device selection (ids, tags,
// site, gateway, state, firmware version), the firmware library, and a job's detail with its stages
// drawn as a chart, per-device outcomes and reasons, cancel and rollback. Running jobs refresh
// every two seconds.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { navigate } from "../../router";
import { Link } from "../../components/Link";
import { EChart, PALETTE } from "../../components/EChart";
import { Empty, ErrorBox, Loading, Time, bytes } from "../../components/ui";
import { useAccess } from "../../lib/access";

type Counts = Record<"queued" | "in_progress" | "succeeded" | "failed" | "timed_out" | "skipped" | "cancelled", number>;

export interface Job {
  id: string;
  name: string;
  state: string;
  reason: string | null;
  target: Record<string, unknown>;
  action: { kind: string; name?: string; patch?: Record<string, unknown>; artifact?: string };
  rollout: Record<string, number>;
  stage: number;
  stages: number;
  started: string;
  finished: string | null;
  created_by: string;
  rollback_of: string | null;
  progress: Counts;
  stage_progress?: (Counts & { stage: number; devices: number })[];
  devices?: { device: string; stage: number; outcome: string; reason: string | null; command: string | null; started: string | null; finished: string | null }[];
}

interface Artifact {
  id: string;
  version: string;
  model: string;
  sha256: string;
  size: number;
  signed: boolean;
  created_at: string;
  bytes_served: number;
  downloads: number;
}

const OUTCOMES: (keyof Counts)[] = ["succeeded", "failed", "timed_out", "skipped", "cancelled", "in_progress", "queued"];
const COLOURS: Record<string, string> = {
  succeeded: "#17803d", failed: "#c0262d", timed_out: "#e8590c", skipped: "#868e96", cancelled: "#adb5bd", in_progress: PALETTE[0], queued: "#dee2e6",
};
const running = (s: string) => s === "running" || s === "paused";

function Progress({ counts, testId }: { counts: Counts; testId?: string }) {
  const total = OUTCOMES.reduce((n, o) => n + counts[o], 0) || 1;
  const title = OUTCOMES.filter((o) => counts[o]).map((o) => `${counts[o]} ${o.replace("_", " ")}`).join(", ");
  return (
    <div className="jobbar" role="img" aria-label={title} title={title} data-testid={testId}
         style={{ display: "flex", height: 12, borderRadius: 6, overflow: "hidden", minWidth: 160, background: COLOURS.queued }}>
      {OUTCOMES.map((o) => counts[o] > 0 && <span key={o} style={{ width: `${(100 * counts[o]) / total}%`, background: COLOURS[o] }} />)}
    </div>
  );
}

function what(job: Job): string {
  const a = job.action;
  if (a.kind === "command") return `command ${a.name}`;
  if (a.kind === "desired") return `desired ${JSON.stringify(a.patch)}`;
  return `firmware ${a.artifact?.slice(0, 8)}`;
}

export function JobsPage() {
  const { canWrite } = useAccess();
  const jobs = useQuery({
    queryKey: ["jobs"],
    queryFn: () => api<{ items: Job[] }>("/api/v1/jobs"),
    refetchInterval: (q) => (q.state.data?.items.some((j) => running(j.state)) ? 2000 : false),
  });
  const firmware = useQuery({ queryKey: ["firmware"], queryFn: () => api<{ items: Artifact[] }>("/api/v1/firmware") });
  const [creating, setCreating] = useState(false);
  return (
    <>
      <h1>Jobs</h1>
      <p className="muted">One action over many devices, in stages: a canary first, then batches, stopped by the abort rule.</p>
      {canWrite && !creating && <button className="btn" onClick={() => setCreating(true)}>New job</button>}
      {creating && <NewJob artifacts={firmware.data?.items ?? []} onDone={() => setCreating(false)} />}
      {jobs.isPending ? <Loading /> : jobs.isError ? <ErrorBox error={jobs.error} retry={() => jobs.refetch()} /> : jobs.data.items.length === 0 ? (
        <Empty title="No jobs yet." />
      ) : (
        <table className="table" data-testid="jobs-table">
          <thead><tr><th>Job</th><th>Action</th><th>State</th><th>Stage</th><th>Progress</th><th>Started</th></tr></thead>
          <tbody>
            {jobs.data.items.map((j) => (
              <tr key={j.id}>
                <td><Link to={`/jobs/${j.id}`}>{j.name || j.id.slice(0, 8)}</Link></td>
                <td><code>{what(j)}</code></td>
                <td><span className="tag">{j.state}</span></td>
                <td>{j.stage} / {j.stages}</td>
                <td><Progress counts={j.progress} /></td>
                <td><Time value={j.started} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Firmware library</h2>
      {firmware.isPending ? <Loading /> : firmware.isError ? <ErrorBox error={firmware.error} /> : firmware.data.items.length === 0 ? (
        <Empty title="No firmware uploaded.">Upload with <code>POST /api/v1/firmware?version=&amp;model=&amp;sha256=</code> (docs/cloud.md).</Empty>
      ) : (
        <table className="table dense" data-testid="firmware-table">
          <thead><tr><th>Model</th><th>Version</th><th>Size</th><th>SHA-256</th><th>Signed</th><th>Sent over uplinks</th><th>Uploaded</th></tr></thead>
          <tbody>
            {firmware.data.items.map((a) => (
              <tr key={a.id}>
                <td>{a.model}</td><td>{a.version}</td><td>{bytes(a.size)}</td><td><code>{a.sha256.slice(0, 16)}…</code></td>
                <td>{a.signed ? "yes" : "no"}</td><td>{bytes(a.bytes_served)} ({a.downloads} complete)</td><td><Time value={a.created_at} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

const list = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);

function NewJob({ artifacts, onDone }: { artifacts: Artifact[]; onDone: () => void }) {
  const qc = useQueryClient();
  const [f, setF] = useState({ name: "", devices: "", tags: "", site: "", gateway: "", states: "", firmware: "", kind: "desired",
    command: "reboot", params: "{}", patch: '{"interval_s": 30}', artifact: "", canary: "1", batch: "0", pause: "0", abort: "20", timeout: "3600" });
  const [error, setError] = useState<string | null>(null);
  const set = (k: keyof typeof f) => (e: { target: { value: string } }) => setF({ ...f, [k]: e.target.value });
  const target = () => ({
    devices: list(f.devices), tags: list(f.tags), site: f.site || null, gateway: f.gateway || null, states: list(f.states), firmware: f.firmware || null,
  });
  const preview = useQuery({
    queryKey: ["job-preview", JSON.stringify(target())],
    queryFn: () => api<{ count: number; devices: string[] }>("/api/v1/jobs/preview", { method: "POST", body: { target: target() } }),
  });
  const create = useMutation({
    mutationFn: (body: unknown) => api<Job>("/api/v1/jobs", { method: "POST", body }),
    onSuccess: (job) => { qc.invalidateQueries({ queryKey: ["jobs"] }); onDone(); navigate(`/jobs/${job.id}`); },
    onError: (e: unknown) => setError(e instanceof Error ? e.message : String(e)),
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    let action: Record<string, unknown>;
    try {
      action = f.kind === "command" ? { kind: "command", name: f.command, params: JSON.parse(f.params || "{}") }
        : f.kind === "desired" ? { kind: "desired", patch: JSON.parse(f.patch) } : { kind: "firmware", artifact: f.artifact };
    } catch {
      setError("params and patch are JSON objects");
      return;
    }
    create.mutate({ name: f.name, target: target(), action,
      rollout: { canary: Number(f.canary), batch_size: Number(f.batch), pause_s: Number(f.pause), abort_percent: Number(f.abort), device_timeout_s: Number(f.timeout) } });
  };
  return (
    <form className="card" aria-label="New job" onSubmit={submit}>
      <h2>New job</h2>
      <div className="grid2">
        <label>Name<input value={f.name} onChange={set("name")} /></label>
        <label>Device ids (comma separated)<input value={f.devices} onChange={set("devices")} /></label>
        <label>Tags (all of)<input value={f.tags} onChange={set("tags")} placeholder="ups, floor=2" /></label>
        <label>Site id<input value={f.site} onChange={set("site")} /></label>
        <label>Gateway id<input value={f.gateway} onChange={set("gateway")} /></label>
        <label>States<input value={f.states} onChange={set("states")} placeholder="online, stale" /></label>
        <label>Firmware version now<input value={f.firmware} onChange={set("firmware")} /></label>
        <label>Action<select value={f.kind} onChange={set("kind")}>
          <option value="desired">desired-state patch</option><option value="command">command</option><option value="firmware">firmware update</option>
        </select></label>
        {f.kind === "command" && <><label>Command<input value={f.command} onChange={set("command")} /></label>
          <label>Params (JSON)<input value={f.params} onChange={set("params")} /></label></>}
        {f.kind === "desired" && <label>Patch (JSON)<input value={f.patch} onChange={set("patch")} /></label>}
        {f.kind === "firmware" && <label>Artifact<select value={f.artifact} onChange={set("artifact")}>
          <option value="">choose…</option>
          {artifacts.map((a) => <option key={a.id} value={a.id}>{a.model} {a.version}</option>)}
        </select></label>}
        <label>Canary (devices)<input type="number" min={0} value={f.canary} onChange={set("canary")} /></label>
        <label>Batch size (0: the rest at once)<input type="number" min={0} value={f.batch} onChange={set("batch")} /></label>
        <label>Pause between stages (s)<input type="number" min={0} value={f.pause} onChange={set("pause")} /></label>
        <label>Abort above (% of a stage failed)<input type="number" min={0} max={100} value={f.abort} onChange={set("abort")} /></label>
        <label>Device timeout (s)<input type="number" min={1} value={f.timeout} onChange={set("timeout")} /></label>
      </div>
      <p data-testid="job-preview">{preview.data ? `${preview.data.count} devices match now.` : "…"}</p>
      {error && <p className="error" role="alert" data-testid="job-error">{error}</p>}
      <button className="btn" type="submit" disabled={create.isPending}>Start job</button>{" "}
      <button className="btn secondary" type="button" onClick={onDone}>Cancel</button>
    </form>
  );
}

export function JobPage({ id }: { id: string }) {
  const { canWrite } = useAccess();
  const qc = useQueryClient();
  const q = useQuery({
    queryKey: ["job", id],
    queryFn: () => api<Job>(`/api/v1/jobs/${id}`),
    refetchInterval: (query) => (query.state.data && running(query.state.data.state) ? 2000 : false),
  });
  const cancel = useMutation({ mutationFn: () => api<Job>(`/api/v1/jobs/${id}/cancel`, { method: "POST" }), onSuccess: () => qc.invalidateQueries({ queryKey: ["job", id] }) });
  const rollback = useMutation({
    mutationFn: () => api<Job>(`/api/v1/jobs/${id}/rollback`, { method: "POST" }),
    onSuccess: (job) => navigate(`/jobs/${job.id}`),
  });
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const j = q.data;
  const stages = j.stage_progress ?? [];
  const option = {
    animation: false,
    tooltip: { trigger: "axis" },
    legend: { bottom: 0 },
    grid: { left: 40, right: 10, top: 10, bottom: 40 },
    xAxis: { type: "category", data: stages.map((s) => (s.stage === 1 && j.rollout.canary ? "canary" : `stage ${s.stage}`)) },
    yAxis: { type: "value", minInterval: 1 },
    series: OUTCOMES.map((o) => ({ name: o.replace("_", " "), type: "bar", stack: "d", data: stages.map((s) => s[o]), itemStyle: { color: COLOURS[o] } })),
  };
  return (
    <>
      <p><Link to="/jobs">← Jobs</Link></p>
      <h1>{j.name || `Job ${j.id.slice(0, 8)}`} <span className="tag" data-testid="job-state">{j.state}</span></h1>
      <p><code>{what(j)}</code> · stage {j.stage} of {j.stages} · started <Time value={j.started} /> by {j.created_by}
        {j.rollback_of && <> · rollback of <Link to={`/jobs/${j.rollback_of}`}>{j.rollback_of.slice(0, 8)}</Link></>}</p>
      {j.reason && <p className={j.state === "aborted" ? "error" : "muted"} role={j.state === "aborted" ? "alert" : undefined} data-testid="job-reason">{j.reason}</p>}
      <Progress counts={j.progress} testId="job-progress" />
      <p className="muted" data-testid="job-counts">{OUTCOMES.filter((o) => j.progress[o]).map((o) => `${j.progress[o]} ${o.replace("_", " ")}`).join(" · ")}</p>
      {canWrite && running(j.state) && <button className="btn danger" onClick={() => cancel.mutate()}>Cancel job</button>}
      {canWrite && !running(j.state) && j.action.kind === "desired" && <button className="btn" onClick={() => rollback.mutate()}>Roll back</button>}
      {rollback.isError && <ErrorBox error={rollback.error} />}
      <h2>Stages</h2>
      <EChart option={option} height={220} testId="job-stages" label="Devices per stage by outcome" probe={stages.map((s) => ({ stage: s.stage, succeeded: s.succeeded, failed: s.failed }))} />
      <h2>Devices</h2>
      <table className="table dense" data-testid="job-devices">
        <thead><tr><th>Device</th><th>Stage</th><th>Outcome</th><th>Reason</th><th>Started</th><th>Finished</th></tr></thead>
        <tbody>
          {(j.devices ?? []).map((d) => (
            <tr key={d.device}>
              <td><Link to={`/devices/${d.device}`}>{d.device}</Link></td><td>{d.stage}</td>
              <td><span className="tag" style={{ borderColor: COLOURS[d.outcome] }}>{d.outcome.replace("_", " ")}</span></td>
              <td>{d.reason ?? ""}</td><td><Time value={d.started} /></td><td><Time value={d.finished} /></td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
