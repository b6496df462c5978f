// Generated from pulse.cloud.notify.senders.CHANNELS (the one table of channel kinds); do not edit.
// Regenerate: .venv/bin/python -m pulse.cloud.notify.senders > cloud/console/src/features/notify/kinds.ts
export const KINDS = ["slack", "pagerduty", "teams", "webhook", "email", "snmp", "mqtt"] as const;
export type ChannelKind = (typeof KINDS)[number];
export const IDEMPOTENT: Record<ChannelKind, boolean> = { slack: false, pagerduty: true, teams: false, webhook: false, email: false, snmp: false, mqtt: false };
