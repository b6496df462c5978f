// Escalation policies: levels of channels or on-call schedules, each after a delay.
import { useState } from "react";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import type { EscalationPolicy } from "../../types";
import { Empty, Loading } from "../../components/ui";
import { Failure, usePolicies, useChannels, useSchedules } from "./shared";

export function EscalationPage() {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const q = usePolicies();
  const channels = useChannels();
  const schedules = useSchedules();
  const targetName = (t: { channel: string } | { schedule: string }) =>
    "channel" in t ? `#${(channels.data ?? []).find((c) => c.id === t.channel)?.name ?? "…"}` : `on-call: ${(schedules.data ?? []).find((s) => s.id === t.schedule)?.name ?? "…"}`;
  type Level = { delay_s: number; target: string };
  const [name, setName] = useState("");
  const [repeat, setRepeat] = useState(0);
  const [levels, setLevels] = useState<Level[]>([{ delay_s: 0, target: "" }]);
  const create = useMutation({
    mutationFn: () =>
      api<EscalationPolicy>("/api/v1/escalation-policies", {
        method: "POST",
        body: {
          name,
          repeat,
          levels: levels.map((l) => {
            const [kind, id] = l.target.split(":");
            return { delay_s: l.delay_s, targets: id ? [kind === "schedule" ? { schedule: id } : { channel: id }] : [] };
          }),
        },
      }),
    onSuccess: () => {
      setName("");
      setLevels([{ delay_s: 0, target: "" }]);
      client.invalidateQueries({ queryKey: ["policies"] });
    },
  });
  const remove = useMutation({ mutationFn: (p: EscalationPolicy) => api<void>(`/api/v1/escalation-policies/${p.id}`, { method: "DELETE" }), onSuccess: () => client.invalidateQueries({ queryKey: ["policies"] }) });
  return (
    <>
      <h1>Escalation policies</h1>
      <p className="muted note">If nobody acknowledges an alert, each level notifies its targets after its delay; the whole policy repeats as often as set.</p>
      {canWrite && (
        <form className="card form-grid" aria-label="New escalation policy" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <label>Name <input required value={name} onChange={(e) => setName(e.target.value)} /></label>
          {levels.map((l, i) => (
            <label key={i}>
              Level {i + 1}
              <span className="row">
                <input type="number" min={0} aria-label={`Level ${i + 1} delay`} value={l.delay_s} onChange={(e) => setLevels(levels.map((x, j) => (j === i ? { ...x, delay_s: Number(e.target.value) } : x)))} />
                <span className="muted">s, then</span>
                <select aria-label={`Level ${i + 1} target`} value={l.target} onChange={(e) => setLevels(levels.map((x, j) => (j === i ? { ...x, target: e.target.value } : x)))}>
                  <option value="">choose…</option>
                  {(channels.data ?? []).map((c) => <option key={c.id} value={`channel:${c.id}`}>channel {c.name}</option>)}
                  {(schedules.data ?? []).map((s) => <option key={s.id} value={`schedule:${s.id}`}>on call in {s.name}</option>)}
                </select>
              </span>
            </label>
          ))}
          <div className="row">
            <button type="button" className="btn small" disabled={levels.length >= 5} onClick={() => setLevels([...levels, { delay_s: 900, target: "" }])}>Add level</button>
            <button type="button" className="btn small" disabled={levels.length <= 1} onClick={() => setLevels(levels.slice(0, -1))}>Remove level</button>
          </div>
          <label>Repeat <input type="number" min={0} max={10} value={repeat} onChange={(e) => setRepeat(Number(e.target.value))} /></label>
          <div className="row"><button className="btn primary" disabled={create.isPending}>Create policy</button></div>
        </form>
      )}
      {(create.error ?? remove.error) && <Failure error={create.error ?? remove.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No escalation policies." />
      ) : (
        <table className="table dense" data-testid="policies-table">
          <thead><tr><th>Name</th><th>Levels</th><th>Repeat</th><th /></tr></thead>
          <tbody>
            {q.data.map((p) => (
              <tr key={p.id}>
                <td>{p.name}</td>
                <td>
                  <ol className="levels">
                    {p.levels.map((l, i) => <li key={i}>after {l.delay_s}s: {l.targets.map(targetName).join(", ") || <span className="muted">nobody</span>}</li>)}
                  </ol>
                </td>
                <td>{p.repeat}×</td>
                <td className="actions">{canWrite && <button className="btn small danger" onClick={() => confirm(`Delete ${p.name}?`) && remove.mutate(p)}>Delete</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

// --- on-call schedules ----------------------------------------------------------------------
