// On-call schedules with the 14-day timeline.
import { useMemo, useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import { navigate, useLocation } from "../../router";
import { gaps, layoutTimeline } from "../../timeline";
import type { Schedule, Timeline } from "../../types";
import { EChart, PALETTE, cssVar } from "../../components/EChart";
import { Empty, ErrorBox, Loading, Time } from "../../components/ui";
import { Failure, useChannels, useSchedules } from "./shared";

type Reach = { channel: string; name: string; kind: string; enabled: boolean } | null;
type NowAnswer = { member: { name: string; channel: string | null; user_id?: string | null; reached_by?: Reach } | null; layer: string | null; until: string | null };

// The names typed in the members box, in order (the console asks a channel for each).
const names = (text: string) => text.split(/\s*,\s*/).map((n) => n.trim()).filter(Boolean);

export function OncallPage() {
  const { canWrite } = useAccess();
  const { query } = useLocation();
  const client = useQueryClient();
  const q = useSchedules();
  const selected = query.get("schedule") ?? q.data?.[0]?.id ?? null;
  const blank = { name: "", time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC", rotation: "weekly", handoff: "09:00", members: "" };
  const [form, setForm] = useState(blank);
  const [reach, setReach] = useState<Record<string, string>>({}); // member name -> channel id
  const channels = useChannels();
  const create = useMutation({
    mutationFn: () =>
      api<Schedule>("/api/v1/oncall/schedules", {
        method: "POST",
        body: {
          name: form.name,
          time_zone: form.time_zone,
          layers: [
            {
              name: "primary",
              rotation: form.rotation,
              handoff: form.handoff,
              handoff_weekday: form.rotation === "weekly" ? 0 : null,
              start: new Date(new Date().setHours(0, 0, 0, 0)).toISOString(),
              members: names(form.members).map((name) => ({ name, channel: reach[name] || null })),
            },
          ],
          overrides: [],
        },
      }),
    onSuccess: (s) => {
      setForm(blank);
      client.invalidateQueries({ queryKey: ["schedules"] });
      navigate(`/oncall?schedule=${s.id}`, { replace: true });
    },
  });
  return (
    <>
      <h1>On-call schedules</h1>
      {canWrite && (
        <form className="card form-row" aria-label="New schedule" onSubmit={(e) => { e.preventDefault(); create.mutate(); }}>
          <input required aria-label="Schedule name" placeholder="schedule name" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
          <input aria-label="Time zone" value={form.time_zone} onChange={(e) => setForm({ ...form, time_zone: e.target.value })} />
          <select aria-label="Rotation" value={form.rotation} onChange={(e) => setForm({ ...form, rotation: e.target.value })}><option>weekly</option><option>daily</option></select>
          <input aria-label="Handoff" type="time" value={form.handoff} onChange={(e) => setForm({ ...form, handoff: e.target.value })} />
          <input required aria-label="Members" placeholder="members, in order: ana, bo, cy" value={form.members} onChange={(e) => setForm({ ...form, members: e.target.value })} />
          {names(form.members).map((name) => (
            <select key={name} aria-label={`Channel for ${name}`} value={reach[name] ?? ""} onChange={(e) => setReach({ ...reach, [name]: e.target.value })}>
              <option value="">{name}: page via…</option>
              {(channels.data ?? []).map((c) => <option key={c.id} value={c.id}>{name}: {c.name} ({c.kind})</option>)}
            </select>
          ))}
          <button className="btn primary" disabled={create.isPending}>Create schedule</button>
        </form>
      )}
      {create.isError && <Failure error={create.error} />}
      {q.isPending ? <Loading /> : q.isError ? <Failure error={q.error} retry={() => q.refetch()} /> : q.data.length === 0 ? (
        <Empty title="No schedules yet." />
      ) : (
        <>
          <div className="tabs" role="tablist" aria-label="Schedules">
            {q.data.map((s) => (
              <button key={s.id} role="tab" aria-selected={s.id === selected} className={s.id === selected ? "on" : ""} onClick={() => navigate(`/oncall?schedule=${s.id}`, { replace: true })}>{s.name}</button>
            ))}
          </div>
          {selected && q.data.find((s) => s.id === selected) && <ScheduleView schedule={q.data.find((s) => s.id === selected)!} />}
        </>
      )}
    </>
  );
}

function ScheduleView({ schedule }: { schedule: Schedule }) {
  const { canWrite, theme } = useAccess();
  const client = useQueryClient();
  const now = useQuery({ queryKey: ["oncall-now", schedule.id], queryFn: () => api<NowAnswer>(`/api/v1/oncall/schedules/${schedule.id}/now`), refetchInterval: 60_000 });
  const channels = useChannels();
  const channelName = (id: string | null) => (id ? channels.data?.find((c) => c.id === id)?.name ?? "…" : "no channel");
  const tl = useQuery({ queryKey: ["timeline", schedule.id], queryFn: () => api<Timeline>(`/api/v1/oncall/schedules/${schedule.id}/timeline`, { query: { days: 14 } }) });
  const [ov, setOv] = useState({ member: "", channel: "", start: "", end: "" });
  const addOverride = useMutation({
    mutationFn: () => {
      const override = { start: new Date(ov.start).toISOString(), end: new Date(ov.end).toISOString(), member: { name: ov.member, channel: ov.channel || null } };
      const body = { name: schedule.name, time_zone: schedule.time_zone, layers: schedule.layers, overrides: [...schedule.overrides, override] };
      return api<Schedule>(`/api/v1/oncall/schedules/${schedule.id}`, { method: "PUT", body });
    },
    onSuccess: () => {
      setOv({ member: "", channel: "", start: "", end: "" });
      client.invalidateQueries({ queryKey: ["schedules"] });
      client.invalidateQueries({ queryKey: ["timeline", schedule.id] });
      client.invalidateQueries({ queryKey: ["oncall-now", schedule.id] });
    },
  });
  const layout = useMemo(() => (tl.data ? layoutTimeline(tl.data.segments, Date.parse(tl.data.from), Date.parse(tl.data.to)) : null), [tl.data]);
  const option = useMemo(() => {
    if (!layout) return null;
    const text = cssVar("--text-muted");
    const grid = cssVar("--border");
    const bars = layout.bars;
    return {
      animation: false,
      tooltip: {
        formatter: (p: { value: [number, number, number, string, string] }) =>
          `${p.value[3]}<br/>${new Date(p.value[1]).toLocaleString()} → ${new Date(p.value[2]).toLocaleString()}<br/>${p.value[4]}`,
      },
      grid: { left: 90, right: 16, top: 8, bottom: 28 },
      xAxis: { type: "time", min: layout.from, max: layout.to, axisLabel: { color: text }, splitLine: { show: true, lineStyle: { color: grid } } },
      yAxis: { type: "category", data: layout.lanes, inverse: true, axisLabel: { color: text }, axisLine: { lineStyle: { color: grid } } },
      series: [
        {
          type: "custom",
          encode: { x: [1, 2], y: 0 },
          data: layout.bars.map((b) => ({ value: [b.lane, b.start, b.end, b.member, b.laneName], itemStyle: { color: PALETTE[b.color % PALETTE.length] } })),
          renderItem: (params: unknown, api: { value: (i: number) => number; coord: (p: number[]) => number[]; size: (p: number[]) => number[]; style: (o?: object) => object }) => {
            const lane = api.value(0);
            const start = api.coord([api.value(1), lane]);
            const end = api.coord([api.value(2), lane]);
            const h = api.size([0, 1])[1] * 0.7;
            const width = Math.max(1, end[0] - start[0]);
            return {
              type: "group",
              children: [
                { type: "rect", shape: { x: start[0], y: start[1] - h / 2, width, height: h, r: 3 }, style: api.style() },
                {
                  type: "text",
                  style: { text: width > 40 ? bars[(params as { dataIndex: number }).dataIndex]?.member ?? "" : "", x: start[0] + 4, y: start[1], verticalAlign: "middle", fill: "#fff", font: "11px system-ui" },
                  silent: true,
                },
              ],
            };
          },
        },
        {
          type: "line",
          data: [],
          markLine: { symbol: "none", silent: true, lineStyle: { color: cssVar("--bad"), type: "dashed" }, label: { formatter: "now", color: cssVar("--bad") }, data: [{ xAxis: Date.now() }] },
        },
      ],
    };
  }, [layout, theme]);
  const holes = layout ? gaps(layout) : [];
  return (
    <section className="card" data-testid="schedule">
      <div className="page-head">
        <h2>{schedule.name}</h2>
        <span className="muted">{schedule.time_zone}</span>
        <span className="spacer" />
        <span data-testid="oncall-now">
          {now.data ? now.data.member ? (
            <>
              On call now: <strong>{now.data.member.name}</strong>{now.data.until && <> until <Time value={now.data.until} /></>}
              {" — "}
              <span data-testid="oncall-reach">
                {now.data.member.reached_by
                  ? <>reached by <strong>{now.data.member.reached_by.name}</strong> ({now.data.member.reached_by.kind}{now.data.member.reached_by.enabled ? "" : ", disabled"})</>
                  : <span className="bad">cannot be reached (no channel)</span>}
              </span>
            </>
          ) : <span className="bad">Nobody is on call now</span> : "…"}
        </span>
      </div>
      {tl.isPending ? <Loading /> : tl.isError ? <Failure error={tl.error} retry={() => tl.refetch()} /> : (
        <>
          <EChart option={option!} height={60 + 34 * layout!.lanes.length} testId="oncall-timeline" label="On-call timeline, 14 days" probe={{ lanes: layout!.lanes, bars: layout!.bars.length, gaps: holes.length }} />
          {holes.length > 0 && <p className="warn">Nobody is on call for {holes.length} period(s) in the next 14 days, from <Time value={new Date(holes[0][0]).toISOString()} />.</p>}
        </>
      )}
      <div className="grid2">
        <div>
          <h3>Layers</h3>
          <ul className="events">
            {schedule.layers.map((l) => <li key={l.name}><strong>{l.name}</strong>: {l.rotation}, handoff {l.handoff}; {l.members.map((m) => `${m.name} (${channelName(m.channel)})`).join(" → ")}</li>)}
          </ul>
        </div>
        <div>
          <h3>Overrides</h3>
          {schedule.overrides.length === 0 ? <p className="muted">None.</p> : (
            <ul className="events">{schedule.overrides.map((o) => <li key={o.id}>{o.member.name} ({channelName(o.member.channel)}): <Time value={o.start} /> → <Time value={o.end} /></li>)}</ul>
          )}
          {canWrite && (
            <form className="form-row" aria-label="Add override" onSubmit={(e) => { e.preventDefault(); addOverride.mutate(); }}>
              <input required aria-label="Override member" placeholder="who" value={ov.member} onChange={(e) => setOv({ ...ov, member: e.target.value })} />
              <select required aria-label="Override channel" value={ov.channel} onChange={(e) => setOv({ ...ov, channel: e.target.value })}>
                <option value="">page via…</option>
                {(channels.data ?? []).map((c) => <option key={c.id} value={c.id}>{c.name} ({c.kind})</option>)}
              </select>
              <input required aria-label="Override start" type="datetime-local" value={ov.start} onChange={(e) => setOv({ ...ov, start: e.target.value })} />
              <input required aria-label="Override end" type="datetime-local" value={ov.end} onChange={(e) => setOv({ ...ov, end: e.target.value })} />
              <button className="btn small">Add override</button>
            </form>
          )}
          {addOverride.isError && <ErrorBox error={addOverride.error} />}
        </div>
      </div>
    </section>
  );
}
