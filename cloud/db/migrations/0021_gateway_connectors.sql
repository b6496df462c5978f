-- Connector sets: the polled devices (Modbus, SNMP) the cloud manages for a gateway (issue 24).
-- Versioned like rule sets; the gateway reports what it did with the newest one it holds.

CREATE TABLE gateway_connectors (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    gateway_id       uuid NOT NULL,
    version          int NOT NULL CHECK (version >= 1),
    devices          jsonb NOT NULL,                  -- the definitions as written (pulse.protocol.connectors)
    updated_by       text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- the gateway's last report about its pushed set
    applied_version  int,
    applied_status   text,
    polled           text[] NOT NULL DEFAULT '{}',
    defined_locally  text[] NOT NULL DEFAULT '{}',
    reported_at      timestamptz,
    PRIMARY KEY (tenant_id, gateway_id),
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE gateway_connectors ENABLE ROW LEVEL SECURITY;
ALTER TABLE gateway_connectors FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON gateway_connectors USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
GRANT SELECT, INSERT, UPDATE ON gateway_connectors TO {{app}};
GRANT SELECT ON gateway_connectors TO {{operator}};

ALTER TABLE gateway_downlink DROP CONSTRAINT gateway_downlink_kind_check;
ALTER TABLE gateway_downlink ADD CONSTRAINT gateway_downlink_kind_check
    CHECK (kind IN ('credential', 'twin_desired', 'command', 'rules', 'connectors'));
