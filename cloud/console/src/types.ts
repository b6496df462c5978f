// Shapes of the cloud's JSON answers (see the OpenAPI document at /docs).

export type Me = { subject: string; tenant_id: string | null; roles: string[]; via: string };

export type DeviceStatus = "provisioned" | "active" | "disabled" | "decommissioned";

export type Device = {
  id: string;
  device_id: string;
  name: string;
  site_id: string | null;
  gateway_id: string | null;
  tags: string[];
  status: DeviceStatus;
  attributes: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  decommissioned_at: string | null;
  state?: string | null; // online | stale | offline | unreachable | never_seen
  last_seen_at?: string | null;
};

export type Uptime = {
  device_id: string;
  window: "24h" | "7d";
  start: string;
  end: string;
  seconds: Record<string, number>;
  online_ratio: number | null;
  segments: { status: string; start: string; end: string }[];
};

export type DevicePage = { items: Device[]; next_cursor: string | null };

export type Site = {
  id: string;
  name: string;
  address: string;
  latitude: number | null;
  longitude: number | null;
  created_at: string;
  updated_at: string;
};

export type Credential = { id: string; created_at: string; rotated_at: string | null; revoked_at: string | null };
export type IssuedCredential = { id: string; device_id: string; token: string };

/** [bucket start ms, mean, min, max, count] */
export type Point = [number, number, number, number, number];
export type Series = {
  device: string; device_id: string; metric: string; from: string; to: string; bucket_s: number; points: Point[];
  /** /telemetry/history only: days answered from the archive's gold rollups */
  archive_days?: number;
};
export type Latest = { device: string; device_id: string; last_seen: string | null; metrics: { name: string; value: number | boolean; time: string }[] };

export type FleetSummary = {
  devices: number;
  devices_by_status: Record<DeviceStatus, number>;
  sites: number;
  devices_by_state?: Record<"online" | "stale" | "offline" | "unreachable" | "never_seen", number>;
  open_alerts?: Record<string, number>;
  gateways?: { online: number; offline: number; pending: number };
};
export type Tenant = { id: string; slug: string; name: string; created_at: string; devices: number };

export type Severity = "critical" | "major" | "minor" | "warning" | "info";
export const SEVERITIES: Severity[] = ["critical", "major", "minor", "warning", "info"];
export type AlertState = "open" | "acknowledged" | "closed";

export type Explanation = {
  text: string;
  rule_id?: string;
  rule_version?: number;
  device_id?: string;
  at_ms?: number;
  metric?: string | null;
  operator?: string | null;
  threshold?: number | boolean | null;
  clear_threshold?: number | null;
  window_s?: number | null;
  since_ms?: number | null;
  readings?: number;
  first?: number | boolean | null;
  last?: number | boolean | null;
  low?: number | null;
  high?: number | null;
  status?: string | null;
  last_seen_ms?: number | null;
  [k: string]: unknown;
};

export type Alert = {
  id: number;
  device_id: string;
  rule_id: string;
  rule_version: number | null;
  kind: "rule" | "gateway_offline";
  severity: Severity;
  state: AlertState;
  flapping: boolean;
  condition_cleared: boolean;
  occurrences: number;
  explanation: Explanation;
  source: "cloud" | "edge";
  gateway_id: string | null;
  site_id: string | null;
  opened_at: string;
  updated_at: string;
  acknowledged_at: string | null;
  acknowledged_by: string | null;
  closed_at: string | null;
  closed_by: string | null;
  silenced_until: string | null;
};

export type AlertEvent = { at: string; kind: string; actor: string; notify: boolean; detail: Record<string, unknown> };
export type Delivery = {
  id: string;
  alert_id: number | null;
  channel_id: string;
  channel_name: string;
  kind: string;
  event: string;
  status: "pending" | "sending" | "delivered" | "failed" | "dead";
  attempts: number;
  next_attempt_at: string | null;
  last_error: string | null;
  created: string;
  delivered_at: string | null;
  attempt_log?: { n: number; at: string; outcome: string; status_code: number | null; error: string | null; duration_ms: number }[];
};
export type AlertDetail = Alert & {
  events: AlertEvent[];
  notifications?: Delivery[];
  escalation?: { policy: string; level: number; next_at: string | null; stopped: boolean } | null;
};

export type Rule = {
  id: string;
  name?: string;
  kind?: "threshold" | "heartbeat";
  version?: number;
  severity: Severity;
  enabled?: boolean;
  auto_close?: boolean;
  metric?: string;
  operator?: string;
  threshold?: number | boolean;
  clear_threshold?: number | null;
  window_s?: number;
  scope?: Record<string, unknown>;
  created_at?: string;
  updated_at?: string;
  [k: string]: unknown;
};
export type PreviewAction = { action: string; device_id: string; at_ms: number; reading_ms?: number; text: string };
export type Preview = { rule: Rule; readings: number; devices: number; actions: PreviewAction[] };

export type Gateway = {
  id: string;
  name: string;
  site_id: string | null;
  status: "pending" | "active" | "revoked";
  last_seen_at: string | null;
  last_batch_at: string | null;
  certificate_expires_at: string | null;
  backlog: Record<string, number>;
  dropped: Record<string, number>;
  oldest_unsynced_at: string | null;
  bytes_received: number;
  batches_received: number;
  clock_offset_ms: number | null;
  clock_corrected_at: string | null;
  agent_version: string | null;
  created_at: string;
};
export type EnrollmentToken = { token: string; expires_at: string };

export type AuditEntry = { id: number; at: string; actor: string; action: string; target: string; detail: Record<string, unknown>; bypass: boolean };

export type Noc = {
  tenants: number;
  devices: number;
  devices_by_state: Record<"online" | "stale" | "offline" | "unreachable" | "unknown", number>;
  online_pct: number | null;
  ingest_rows_per_s: number;
  open_alerts: Record<Severity, number>;
  gateways: { online: number; offline: number };
  db_pools: Record<string, { in_use: number; size: number; max: number }>;
};
export type TenantHealth = {
  id: string;
  slug: string;
  name: string;
  devices: number;
  online: number;
  offline: number;
  open_alerts: number;
  critical_alerts: number;
  gateways: number;
  gateways_offline: number;
  last_ingest_at: string | null;
};
export type OperatorDevice = { id: string; tenant_id: string; tenant_slug: string; device_id: string; name: string; status: string; state: string | null; updated_at: string };
export type OperatorAlert = Pick<Alert, "id" | "device_id" | "rule_id" | "kind" | "severity" | "state" | "explanation" | "opened_at" | "updated_at"> & { tenant_id: string; tenant_slug: string };
export type { FeedEvent } from "./live";

// twin and commands (API-CONTRACT.md, helper "twin")
export type TwinDoc = {
  version: number;
  timestamp: number;
  state: { desired: Record<string, unknown>; reported: Record<string, unknown>; delta: Record<string, unknown> };
  metadata: { desired?: Record<string, unknown>; reported?: Record<string, unknown> };
};
export type CommandState = "queued" | "delivered" | "sent" | "succeeded" | "failed" | "expired";
export type Command = {
  id: string;
  device: string;
  name: string;
  params: Record<string, unknown>;
  state: CommandState;
  created: string;
  expires: string;
  updated: string;
  result: Record<string, unknown> | null;
  error: string | null;
};

// notifications, escalation, on-call (API-CONTRACT.md, helper "notify")
import type { ChannelKind } from "./features/notify/kinds";
export type { ChannelKind };
export type Channel = { id: string; name: string; kind: ChannelKind; config: Record<string, unknown>; enabled: boolean; created: string };
export type Route = {
  id: string;
  name: string;
  enabled: boolean;
  min_severity: Severity;
  alert_types: string[];
  sites: string[];
  device_tags: Record<string, string>;
  channels: string[];
  escalation_policy: string | null;
  throttle_s: number;
};
export type EscalationPolicy = { id: string; name: string; levels: { delay_s: number; targets: ({ channel: string } | { schedule: string })[] }[]; repeat: number };
export type Member = { name: string; channel: string | null; user_id?: string };
export type Schedule = {
  id: string;
  name: string;
  time_zone: string;
  layers: { name: string; rotation: "daily" | "weekly"; handoff: string; handoff_weekday: number | null; start: string; members: Member[] }[];
  overrides: { id: string; start: string; end: string; member: Member }[];
};
export type Timeline = { from: string; to: string; segments: { start: string; end: string; member: Member | null; layer?: string; override?: string | boolean }[] };

export type Subscription = {
  id: string;
  kind: "MAIN" | "ADDON" | "TRIAL" | "TEMPORARY";
  state: "TRIAL" | "ACTIVE" | "GRACE" | "SUSPENDED" | "EXPIRED";
  device_limit: number;
  starts_at: string;
  ends_at: string;
  parent: string | null;
  project: string;
  created_at: string;
  updated_at: string;
};
export type SubscriptionSummary = { device_limit: number | null; devices: number; refusal: string | null; subscriptions: Subscription[] };
export type SubscriptionChange = {
  id: number;
  subscription: string;
  at: string;
  actor: string;
  action: string;
  before_state: string | null;
  after_state: string;
  detail: Record<string, unknown>;
};
export type Quarantined = {
  id: number;
  device_id: string | null;
  gateway_id: string | null;
  source: string;
  code: string;
  reason: string;
  received_at: string;
  raw_encoding: "utf-8" | "base64";
  raw: string;
  raw_bytes: number;
  raw_truncated: boolean;
  resubmitted_at: string | null;
  resubmitted_by: string | null;
};

export type ConnectorSet = {
  version: number;
  devices: Record<string, unknown>[];
  updated_by: string | null;
  updated_at: string | null;
  gateway: { version: number | null; status: string | null; polled: string[]; defined_locally: string[]; reported_at: string | null };
};
