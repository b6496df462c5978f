-- Rules, their per-device state, alerts and their history, maintenance windows, device state.
-- Every table is tenant-owned under the same row-level security policy as 0002.

CREATE TABLE rules (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    version     int NOT NULL CHECK (version >= 1),
    kind        text NOT NULL CHECK (kind IN ('threshold', 'heartbeat')),
    enabled     boolean NOT NULL,
    definition  jsonb NOT NULL,                 -- rule_to_dict(parse_rule(...)): validated before it is stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- RuleState.to_dict() per (rule, device), written in the same transaction as the alert it caused,
-- so a restart in the middle of a window continues where it was.
CREATE TABLE rule_state (
    tenant_id   uuid NOT NULL,
    rule_id     text NOT NULL,
    device_id   text NOT NULL,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id, device_id),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES rules (tenant_id, id) ON DELETE CASCADE
);

-- One row per alert. Fingerprint = (tenant_id, device_id, rule_id); at most one not closed.
CREATE TABLE alerts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id          text NOT NULL,           -- a device id, or 'gateway:<name>' for GATEWAY_OFFLINE
    rule_id            text NOT NULL,           -- a rule id, or 'GATEWAY_OFFLINE'
    rule_version       int,
    kind               text NOT NULL DEFAULT 'rule' CHECK (kind IN ('rule', 'gateway_offline')),
    severity           text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning', 'info')),
    state              text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'closed')),
    flapping           boolean NOT NULL DEFAULT false,
    condition_cleared  boolean NOT NULL DEFAULT false,
    occurrences        int NOT NULL DEFAULT 1,   -- OpenAlerts merged into this one (both tiers, retries)
    explanation        jsonb NOT NULL,
    source             text NOT NULL DEFAULT 'cloud' CHECK (source IN ('cloud', 'edge')),
    gateway_id         uuid,
    site_id            uuid,
    opened_at          timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    acknowledged_at    timestamptz,
    acknowledged_by    text,
    closed_at          timestamptz,
    closed_by          text,                     -- 'rule' (condition cleared), 'edge', or the person
    silenced_until     timestamptz
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (tenant_id, device_id, rule_id) WHERE state <> 'closed';
CREATE INDEX alerts_tenant_opened ON alerts (tenant_id, opened_at DESC);

CREATE TABLE alert_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    alert_id   bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,   -- opened, merged, flapping_started, flapping_ended, condition_cleared, closed, acknowledged, silenced
    actor      text NOT NULL,   -- 'rule', 'edge:<gateway>', or the person
    notify     boolean NOT NULL DEFAULT false,   -- whether notification is due (false while silenced)
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

CREATE TABLE maintenance_windows (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id   text,
    site_id     uuid,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    reason      text NOT NULL DEFAULT '',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (device_id IS NOT NULL OR site_id IS NOT NULL),
    CHECK (ends_at > starts_at),
    FOREIGN KEY (tenant_id, site_id) REFERENCES sites (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX maintenance_windows_tenant ON maintenance_windows (tenant_id, ends_at);

CREATE TABLE device_states (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id   text NOT NULL,
    status      text NOT NULL CHECK (status IN ('online', 'stale', 'offline', 'unreachable')),
    reason      jsonb NOT NULL DEFAULT '{}',
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rules', 'rule_state', 'alerts', 'alert_events', 'maintenance_windows', 'device_states']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON rules, rule_state, alerts, alert_events, maintenance_windows, device_states TO {{app}};
GRANT USAGE ON SEQUENCE alerts_id_seq, alert_events_id_seq TO {{app}};
GRANT SELECT, INSERT, UPDATE, DELETE ON rules, rule_state, alerts, alert_events, maintenance_windows, device_states TO {{operator}};
GRANT USAGE ON SEQUENCE alerts_id_seq, alert_events_id_seq TO {{operator}};
-- Gateway sync merges a gateway's alert records in the same writer transaction as the batch and
-- its high-water mark (pulse.cloud.alerts.merge_edge_alerts; every statement names the tenant).
GRANT SELECT, INSERT, UPDATE ON alerts, alert_events TO {{writer}};
GRANT SELECT ON maintenance_windows, devices, gateways TO {{writer}};
GRANT USAGE ON SEQUENCE alerts_id_seq, alert_events_id_seq TO {{writer}};

-- The heartbeat sweep visits every tenant that has something to watch; this is the only thing it
-- needs to know across tenants (then it works inside each tenant's row-level security).
CREATE FUNCTION pulse_alerting_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT tenant_id FROM rules WHERE enabled
    UNION SELECT tenant_id FROM gateways WHERE status = 'active'
    UNION SELECT tenant_id FROM alerts WHERE state <> 'closed' AND kind = 'gateway_offline'
$$;
ALTER FUNCTION pulse_alerting_tenants() OWNER TO {{identity}};
GRANT SELECT ON rules, alerts TO {{identity}};
GRANT SELECT ON gateways TO {{identity}};
REVOKE ALL ON FUNCTION pulse_alerting_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_alerting_tenants() TO {{app}}, {{operator}};
