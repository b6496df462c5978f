// A gateway's polled devices (Modbus, SNMP) managed from the cloud: the set as JSON (the same
// definitions as gateway.toml's [[connectors.devices]]), its version, and what the gateway said it
// did with it. Saving sends the version it was based on, so two people editing never overwrite
// each other silently (409 connector.version_conflict).
import { useEffect, useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api";
import { useAccess } from "../../lib/access";
import type { ConnectorSet, Gateway } from "../../types";
import { ago, ErrorBox, Loading } from "../../components/ui";

const EXAMPLE = `[
  {"id": "ups-1", "kind": "snmp", "host": "10.0.0.7", "profile": "ups-mib", "interval_s": 30},
  {"id": "meter-1", "kind": "modbus", "host": "10.0.0.8", "profile": "power-meter", "interval_s": 10}
]`;

export function parseDevices(text: string): { devices?: Record<string, unknown>[]; error?: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { error: `not JSON: ${(e as Error).message}` };
  }
  if (!Array.isArray(doc) || doc.some((d) => typeof d !== "object" || d === null || Array.isArray(d))) {
    return { error: "a list of device definitions: [{...}, {...}]" };
  }
  return { devices: doc as Record<string, unknown>[] };
}

export function ConnectorsPanel({ gateway, onClose }: { gateway: Gateway; onClose: () => void }) {
  const { canWrite } = useAccess();
  const client = useQueryClient();
  const key = ["gateway-connectors", gateway.id];
  const q = useQuery({ queryKey: key, queryFn: () => api<ConnectorSet>(`/api/v1/gateways/${gateway.id}/connectors`), refetchInterval: 10_000 });
  const [text, setText] = useState<string | null>(null);
  useEffect(() => {
    if (q.data && text === null) setText(q.data.version ? JSON.stringify(q.data.devices, null, 2) : EXAMPLE);
  }, [q.data, text]);
  const parsed = parseDevices(text ?? "[]");
  const save = useMutation({
    mutationFn: () =>
      api<ConnectorSet>(`/api/v1/gateways/${gateway.id}/connectors`, {
        method: "PUT",
        body: { devices: parsed.devices ?? [], expected_version: q.data?.version ?? 0 },
      }),
    onSuccess: (r) => {
      client.setQueryData(key, r);
      setText(JSON.stringify(r.devices, null, 2));
      client.invalidateQueries({ queryKey: ["devices"] });
    },
  });
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const s = q.data;
  const behind = s.version > 0 && s.gateway.version !== s.version;
  return (
    <section className="card" aria-label={`Polled devices of ${gateway.name}`} data-testid="connectors-panel">
      <h2>
        Polled devices of {gateway.name} <button className="btn small" onClick={onClose}>Close</button>
      </h2>
      <p>
        {s.version ? (
          <>Set version <strong>{s.version}</strong>, saved by {s.updated_by} {ago(s.updated_at)}. </>
        ) : (
          <>Nothing pushed yet: the gateway polls only what its gateway.toml lists. </>
        )}
        {s.gateway.reported_at ? (
          <span data-testid="connectors-gateway-state" className={s.gateway.status?.startsWith("refused") ? "warn" : ""}>
            The gateway holds version {s.gateway.version ?? "none"} ({s.gateway.status}), polls {s.gateway.polled.length} device
            {s.gateway.polled.length === 1 ? "" : "s"}: {s.gateway.polled.join(", ") || "none"}; reported {ago(s.gateway.reported_at)}.
            {behind && " It has not taken the newest version yet (it does when its link is up)."}
          </span>
        ) : (
          s.version > 0 && <span className="muted">The gateway has not reported since; it takes the set when its link is up.</span>
        )}
      </p>
      {s.gateway.defined_locally.length > 0 && (
        <p className="warn">Defined in the gateway's own gateway.toml, so kept from there: {s.gateway.defined_locally.join(", ")}.</p>
      )}
      <p className="muted">
        Definitions as in gateway.toml's <code>[[connectors.devices]]</code>, written as JSON (docs/protocol.md, "Connectors"). Devices not
        registered yet are registered to this gateway.
      </p>
      <textarea
        aria-label="Connector devices (JSON)"
        className="code"
        rows={14}
        spellCheck={false}
        readOnly={!canWrite}
        value={text ?? ""}
        onChange={(e) => setText(e.target.value)}
        style={{ width: "100%", fontFamily: "monospace" }}
      />
      {parsed.error && <p className="warn" role="status">{parsed.error}</p>}
      {save.error && <ErrorBox error={save.error} />}
      {canWrite && (
        <button className="btn primary" disabled={!!parsed.error || save.isPending} onClick={() => save.mutate()}>
          Push to the gateway
        </button>
      )}
    </section>
  );
}
