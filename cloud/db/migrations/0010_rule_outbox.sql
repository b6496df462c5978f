-- Threshold evaluation from a durable position: every transaction that stores telemetry also
-- stores, per tenant, what the rules need of those rows (device, metrics, received_at) in
-- rule_outbox. The rules runner evaluates an outbox entry and deletes it in ONE transaction with
-- the rule states and alerts it produced, so an entry is evaluated exactly once: rows committed
-- but not yet evaluated when the cloud dies are still here when it starts again.

CREATE TABLE rule_outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,                -- no foreign key: like telemetry (a deleted tenant's entries drain to no rules)
    device_ids   text[] NOT NULL,
    metrics      text[] NOT NULL,          -- the rows' metrics JSON, as stored in telemetry.metrics
    received_ms  bigint[] NOT NULL,        -- the cloud's clock (Unix ms) when each row arrived: "now" for the rules
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(device_ids) = cardinality(metrics) AND cardinality(metrics) = cardinality(received_ms))
);
CREATE INDEX rule_outbox_tenant ON rule_outbox (tenant_id, id);

ALTER TABLE rule_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE rule_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rule_outbox USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());

GRANT INSERT ON rule_outbox TO {{writer}};
GRANT USAGE ON SEQUENCE rule_outbox_id_seq TO {{writer}};
GRANT SELECT, UPDATE, DELETE ON rule_outbox TO {{app}};  -- UPDATE: SELECT ... FOR UPDATE needs it

-- The runner's catch-up (at start and every sweep) finds the tenants with entries left over.
CREATE FUNCTION pulse_rule_outbox_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT DISTINCT tenant_id FROM rule_outbox
$$;
ALTER FUNCTION pulse_rule_outbox_tenants() OWNER TO {{identity}};
GRANT SELECT ON rule_outbox TO {{identity}};
REVOKE ALL ON FUNCTION pulse_rule_outbox_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_rule_outbox_tenants() TO {{app}}, {{operator}};
