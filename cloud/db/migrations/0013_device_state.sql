-- Every device has a connectivity state without anyone writing a rule (issue 18, part B).
--
-- The rules runner evaluates a built-in heartbeat rule, NO_HEARTBEAT, for every tenant: its
-- per-device state (last seen, ONLINE/STALE/OFFLINE) lives in rule_state like any rule's, and
-- heartbeat_settings holds what the tenant-admin adjusted (no row: the defaults, alerts on).
-- device_state_history keeps every transition of device_states, for the console's uptime strip.

-- NO_HEARTBEAT has no row in rules, so rule_state cannot require one: a deleted rule's states go
-- with it by trigger instead of by foreign key, and a deleted tenant's with the tenant.
ALTER TABLE rule_state DROP CONSTRAINT rule_state_tenant_id_rule_id_fkey;
ALTER TABLE rule_state ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;

CREATE FUNCTION pulse_rule_state_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM rule_state WHERE tenant_id = OLD.tenant_id AND rule_id = OLD.id;
    RETURN OLD;
END
$$;
CREATE TRIGGER rule_state_gone AFTER DELETE ON rules FOR EACH ROW EXECUTE FUNCTION pulse_rule_state_gone();

CREATE TABLE heartbeat_settings (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    alerts_enabled  boolean NOT NULL DEFAULT true,
    interval_s      double precision NOT NULL DEFAULT 300 CHECK (interval_s >= 1 AND interval_s <= 604800),
    stale_after     double precision NOT NULL DEFAULT 1.5 CHECK (stale_after > 1),
    offline_after   double precision NOT NULL DEFAULT 3.0 CHECK (offline_after > stale_after),
    severity        text NOT NULL DEFAULT 'major' CHECK (severity IN ('critical', 'major', 'minor', 'warning', 'info')),
    version         int NOT NULL DEFAULT 1 CHECK (version >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL
);

CREATE TABLE device_state_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id   text NOT NULL,
    status      text NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX device_state_history_device ON device_state_history (tenant_id, device_id, at);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['heartbeat_settings', 'device_state_history']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

-- Every change of a device's status is appended, in the transaction that changed it.
CREATE FUNCTION pulse_device_state_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO device_state_history (tenant_id, device_id, status, at)
        VALUES (NEW.tenant_id, NEW.device_id, NEW.status, NEW.changed_at);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER device_state_history AFTER INSERT OR UPDATE ON device_states
    FOR EACH ROW EXECUTE FUNCTION pulse_device_state_history();

GRANT SELECT, INSERT, UPDATE ON heartbeat_settings TO {{app}};
GRANT SELECT, INSERT ON device_state_history TO {{app}};
GRANT USAGE ON SEQUENCE device_state_history_id_seq TO {{app}}, {{operator}};
GRANT SELECT, INSERT, UPDATE, DELETE ON heartbeat_settings, device_state_history TO {{operator}};

-- The sweep now visits every tenant: each has NO_HEARTBEAT to advance.
CREATE OR REPLACE FUNCTION pulse_alerting_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT id FROM tenants
$$;
GRANT SELECT ON tenants TO {{identity}};

-- Quarantine in the API (issue 18, part B): a tenant-admin re-submits a quarantined message through
-- ingest again once the device is fixed; the row records that it was (and by whom).
ALTER TABLE quarantine ADD COLUMN resubmitted_at timestamptz, ADD COLUMN resubmitted_by text;
CREATE INDEX quarantine_tenant_code ON quarantine (tenant_id, code, id DESC);
CREATE INDEX quarantine_tenant_device ON quarantine (tenant_id, device_id, id DESC);
GRANT UPDATE (resubmitted_at, resubmitted_by) ON quarantine TO {{app}};
