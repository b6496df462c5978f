-- Notifications: channels, routing rules, escalation policies, on-call schedules, the durable
-- delivery queue with its attempt log, per-channel throttle state and escalation state per alert.
-- Every table is tenant-owned under the same row-level security policy as 0002/0006.
--
-- How a notification travels (docs/notifications.md, "Queue semantics"):
--   alert_events row with notify = true
--     -> trigger puts its id in notify_outbox (same transaction as the event, so none is missed)
--     -> the fan-out worker takes outbox rows (FOR UPDATE SKIP LOCKED: two cloud processes never
--        take the same row), matches routes and inserts one notify_deliveries row per channel
--        (UNIQUE (channel_id, dedup): a repeated fan-out cannot queue a second one), deletes the outbox row
--     -> the delivery worker claims a due row (status 'sending', claim_token, claimed_at, attempts + 1:
--        committed BEFORE the send), sends, records the outcome and an attempt row.

CREATE TABLE notify_channels (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    kind        text NOT NULL CHECK (kind IN ('slack', 'pagerduty', 'teams', 'webhook', 'email', 'snmp', 'mqtt')),
    config      jsonb NOT NULL,            -- validated by the channel's Config; secrets included (redacted by the API)
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE escalation_policies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    levels      jsonb NOT NULL,            -- [{"delay_s", "targets": [{"channel": id} | {"schedule": id}]}], 1-5
    repeat      int NOT NULL DEFAULT 0 CHECK (repeat BETWEEN 0 AND 3),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notify_routes (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    enabled            boolean NOT NULL DEFAULT true,
    min_severity       text NOT NULL CHECK (min_severity IN ('critical', 'major', 'minor', 'warning', 'info')),
    alert_types        text[] NOT NULL DEFAULT '{}',
    sites              text[] NOT NULL DEFAULT '{}',
    device_tags        jsonb NOT NULL DEFAULT '{}',
    channels           uuid[] NOT NULL DEFAULT '{}',
    escalation_policy  uuid REFERENCES escalation_policies (id) ON DELETE SET NULL,
    throttle_s         int NOT NULL DEFAULT 0 CHECK (throttle_s BETWEEN 0 AND 86400),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notify_routes_tenant ON notify_routes (tenant_id, created_at);

CREATE TABLE oncall_schedules (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    time_zone   text NOT NULL,
    layers      jsonb NOT NULL,            -- as the API takes them; validated by pulse.cloud.notify.oncall
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE oncall_overrides (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    schedule_id  uuid NOT NULL REFERENCES oncall_schedules (id) ON DELETE CASCADE,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL CHECK (ends_at > starts_at),
    member       jsonb NOT NULL,           -- {"name", "channel": uuid|null}
    position     int NOT NULL DEFAULT 0    -- list order: among overlapping overrides the last wins
);
CREATE INDEX oncall_overrides_schedule ON oncall_overrides (schedule_id, position);

-- Events whose notification is still to be fanned out. Filled by a trigger on alert_events, so an
-- alert and its "notification due" commit together, whoever writes the event (API, rule runner,
-- gateway sync as the writer role).
CREATE TABLE notify_outbox (
    event_id   bigint PRIMARY KEY REFERENCES alert_events (id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX notify_outbox_tenant ON notify_outbox (tenant_id, event_id);

CREATE TABLE notify_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    alert_id         bigint REFERENCES alerts (id) ON DELETE CASCADE,     -- null for test notifications
    channel_id       uuid NOT NULL REFERENCES notify_channels (id) ON DELETE CASCADE,
    kind             text NOT NULL,
    event            text NOT NULL CHECK (event IN ('opened', 'acknowledged', 'closed', 'test', 'escalated')),
    dedup            text NOT NULL,        -- 'event:<alert_events.id>', 'esc:<alert>:<cycle>:<level>', 'test:<uuid>'
    notification     jsonb NOT NULL,       -- the Notification as built at fan-out (what every attempt sends)
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'dead')),
    attempts         int NOT NULL DEFAULT 0,      -- every attempt ever (the attempt log has one row each)
    budget           int NOT NULL DEFAULT 5,      -- dead-lettered once attempts reach it; a manual retry adds a round
    next_attempt_at  timestamptz,          -- when pending: not before
    last_error       text,
    last_code        text,
    claim_token      uuid,                 -- set with status 'sending' before the send; the record must match it
    claimed_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at     timestamptz,
    escalation_level int,
    UNIQUE (channel_id, dedup)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (tenant_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX notify_deliveries_sending ON notify_deliveries (tenant_id, claimed_at) WHERE status = 'sending';
CREATE INDEX notify_deliveries_alert ON notify_deliveries (alert_id, created_at);
CREATE INDEX notify_deliveries_list ON notify_deliveries (tenant_id, created_at DESC, id DESC);

CREATE TABLE notify_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    delivery_id  uuid NOT NULL REFERENCES notify_deliveries (id) ON DELETE CASCADE,
    n            int NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome      text NOT NULL,           -- delivered, retry, failed, unknown
    status_code  int,
    code         text,
    error        text,
    duration_ms  int
);
CREATE INDEX notify_attempts_delivery ON notify_attempts (delivery_id, id);

-- Per channel and alert fingerprint (device/rule): when the last "opened"/"escalated" went out.
CREATE TABLE notify_throttle (
    tenant_id     uuid NOT NULL,
    channel_id    uuid NOT NULL REFERENCES notify_channels (id) ON DELETE CASCADE,
    fingerprint   text NOT NULL,
    last_sent_at  timestamptz NOT NULL,
    PRIMARY KEY (channel_id, fingerprint)
);

CREATE TABLE alert_escalations (
    alert_id     bigint PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    tenant_id    uuid NOT NULL,
    policy_id    uuid NOT NULL REFERENCES escalation_policies (id) ON DELETE CASCADE,
    level        int NOT NULL DEFAULT -1,   -- last level notified (-1: none yet)
    cycle        int NOT NULL DEFAULT 0,
    notified_at  timestamptz,
    next_at      timestamptz,               -- when the worker looks again; null once stopped
    stopped      boolean NOT NULL DEFAULT false,
    stop_reason  text
);
CREATE INDEX alert_escalations_due ON alert_escalations (tenant_id, next_at) WHERE NOT stopped;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['notify_channels', 'escalation_policies', 'notify_routes', 'oncall_schedules', 'oncall_overrides',
                             'notify_outbox', 'notify_deliveries', 'notify_attempts', 'notify_throttle', 'alert_escalations']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON notify_channels, escalation_policies, notify_routes, oncall_schedules, oncall_overrides,
    notify_outbox, notify_deliveries, notify_attempts, notify_throttle, alert_escalations TO {{app}}, {{operator}};
GRANT USAGE ON SEQUENCE notify_attempts_id_seq TO {{app}}, {{operator}};

-- The outbox trigger runs as whoever inserts the event (the app role in a tenant transaction, the
-- writer role in gateway sync after set_config('app.tenant_id')): both may insert outbox rows.
CREATE FUNCTION pulse_notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notify_outbox (event_id, tenant_id) VALUES (NEW.id, NEW.tenant_id);
    PERFORM pg_notify('pulse_notify', '');
    RETURN NULL;
END
$$;
GRANT INSERT ON notify_outbox TO {{writer}};
CREATE TRIGGER alert_events_notify AFTER INSERT ON alert_events
    FOR EACH ROW WHEN (NEW.notify) EXECUTE FUNCTION pulse_notify_outbox();

-- Deliveries that become due now (new, or retried by hand) wake the delivery workers of every
-- cloud process (LISTEN pulse_notify); PostgreSQL sends one notification per transaction.
CREATE FUNCTION pulse_notify_delivery_queued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pulse_notify', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER notify_deliveries_queued AFTER INSERT ON notify_deliveries
    FOR EACH ROW EXECUTE FUNCTION pulse_notify_delivery_queued();
CREATE TRIGGER notify_deliveries_retried AFTER UPDATE OF status ON notify_deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status IN ('dead', 'failed'))
    EXECUTE FUNCTION pulse_notify_delivery_queued();

-- The workers visit tenants that have something to do, then work inside each tenant's row-level
-- security: this is the only thing they learn across tenants.
CREATE FUNCTION pulse_notify_busy_tenants(stale_before timestamptz, at timestamptz) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT tenant_id FROM notify_outbox
    UNION SELECT tenant_id FROM notify_deliveries WHERE status = 'pending' AND next_attempt_at <= at
    UNION SELECT tenant_id FROM notify_deliveries WHERE status = 'sending' AND claimed_at < stale_before
    UNION SELECT tenant_id FROM alert_escalations WHERE NOT stopped AND next_at <= at
$$;
ALTER FUNCTION pulse_notify_busy_tenants(timestamptz, timestamptz) OWNER TO {{identity}};
GRANT SELECT ON notify_outbox, notify_deliveries, alert_escalations TO {{identity}};
REVOKE ALL ON FUNCTION pulse_notify_busy_tenants(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_notify_busy_tenants(timestamptz, timestamptz) TO {{app}}, {{operator}};
