-- Device twins, their history (the audit trail of every accepted change) and commands
-- (docs/cloud.md "Device twin and commands"). Every table is tenant-owned under the same row-level
-- security policy as 0002. Gateway sync applies reported state and command answers in the writer
-- transaction of the batch (so a replayed batch is never applied twice): the writer role gets what
-- that needs, every statement naming the tenant.

CREATE TABLE twins (
    tenant_id   uuid NOT NULL,
    device_id   text NOT NULL,
    version     bigint NOT NULL CHECK (version >= 0),
    document    jsonb NOT NULL,                 -- pulse.protocol.twin.to_json: version, state, metadata
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);

CREATE TABLE twin_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    device_id   text NOT NULL,
    version     bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                  -- the person, 'device:<id>' or 'gateway:<uuid>'
    source      text NOT NULL CHECK (source IN ('user', 'device')),
    change      jsonb NOT NULL,                 -- pulse.protocol.twin.TwinChange.to_json
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);
CREATE INDEX twin_history_device ON twin_history (tenant_id, device_id, id DESC);

CREATE TABLE commands (
    n           bigint GENERATED ALWAYS AS IDENTITY,   -- paging order (newest first)
    tenant_id   uuid NOT NULL,
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    device_id   text NOT NULL,
    name        text NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}',
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'delivered', 'sent', 'succeeded', 'failed', 'expired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    result      jsonb,
    error       text,
    created_by  text NOT NULL,
    document    jsonb NOT NULL,                  -- pulse.protocol.commands.to_json, with the history
    PRIMARY KEY (tenant_id, id),
    UNIQUE (n),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);
CREATE INDEX commands_device ON commands (tenant_id, device_id, n DESC);
CREATE INDEX commands_open ON commands (expires_at) WHERE state IN ('queued', 'delivered');

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['twins', 'twin_history', 'commands']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON twins, twin_history, commands TO {{app}};
GRANT USAGE ON SEQUENCE twin_history_id_seq, commands_n_seq TO {{app}};
GRANT SELECT, INSERT, UPDATE, DELETE ON twins, twin_history, commands TO {{operator}};
GRANT USAGE ON SEQUENCE twin_history_id_seq, commands_n_seq TO {{operator}};
GRANT SELECT, INSERT, UPDATE ON twins, commands TO {{writer}};
GRANT SELECT, INSERT ON twin_history TO {{writer}};
GRANT USAGE ON SEQUENCE twin_history_id_seq TO {{writer}};

-- The expiry sweep visits every tenant with a command past its deadline that was never sent; this
-- is all it needs to know across tenants (then it works inside each tenant's row-level security).
CREATE FUNCTION pulse_command_expiry_tenants(grace_s int) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT DISTINCT tenant_id FROM commands
    WHERE (state = 'queued' AND expires_at <= now())
       OR (state = 'delivered' AND expires_at <= now() - make_interval(secs => grace_s))
$$;
ALTER FUNCTION pulse_command_expiry_tenants(int) OWNER TO {{identity}};
GRANT SELECT ON commands TO {{identity}};
REVOKE ALL ON FUNCTION pulse_command_expiry_tenants(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_command_expiry_tenants(int) TO {{app}}, {{operator}};
