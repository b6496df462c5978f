-- Gateway sync (docs/protocol.md section 6): enrollment tokens, issued certificates, per-stream
-- high-water marks, the downlink queue, and what gateways report. Every table is tenant-owned
-- with the same RLS policy as the rest; identity look-ups that happen before a tenant is known
-- (an enrollment token, a client certificate's serial) go through SECURITY DEFINER functions.

ALTER TABLE gateways
    ADD COLUMN downlink_seq        bigint NOT NULL DEFAULT 0,   -- last downlink seq handed out
    ADD COLUMN last_batch_at       timestamptz,
    ADD COLUMN batches_received    bigint NOT NULL DEFAULT 0,
    ADD COLUMN bytes_received      bigint NOT NULL DEFAULT 0,
    ADD COLUMN clock_offset_ms     bigint,                      -- cloud minus gateway, last batch
    ADD COLUMN clock_corrected_at  timestamptz,                 -- last batch whose times were shifted
    ADD COLUMN dropped             jsonb NOT NULL DEFAULT '{}', -- stream -> records the quota dropped
    ADD COLUMN backlog             jsonb NOT NULL DEFAULT '{}', -- stream -> records waiting
    ADD COLUMN oldest_unsynced_at  timestamptz,
    ADD COLUMN agent_version       text,
    ADD COLUMN reported_at         timestamptz;

CREATE TABLE gateway_enrollment_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    gateway_id  uuid NOT NULL,
    token_hash  text NOT NULL UNIQUE,        -- sha256 of the token; the token is shown once
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE gateway_certificates (
    serial      numeric(50) PRIMARY KEY,     -- X.509 serials are up to 160 bits
    tenant_id   uuid NOT NULL,
    gateway_id  uuid NOT NULL,
    not_after   timestamptz NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX gateway_certificates_gateway ON gateway_certificates (gateway_id);

CREATE TABLE gateway_sync_marks (
    tenant_id   uuid NOT NULL,
    gateway_id  uuid NOT NULL,
    stream      smallint NOT NULL,
    high_water  bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, stream),
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE gateway_downlink (
    tenant_id   uuid NOT NULL,
    gateway_id  uuid NOT NULL,
    seq         bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('credential', 'twin_desired', 'command', 'rules')),
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    acked_at    timestamptz,
    PRIMARY KEY (gateway_id, seq),
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX gateway_downlink_pending ON gateway_downlink (gateway_id, seq) WHERE acked_at IS NULL;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['gateway_enrollment_tokens', 'gateway_certificates', 'gateway_sync_marks', 'gateway_downlink']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON gateway_enrollment_tokens, gateway_certificates, gateway_sync_marks,
    gateway_downlink TO {{app}};
GRANT SELECT, INSERT, UPDATE, DELETE ON gateway_enrollment_tokens, gateway_certificates, gateway_sync_marks,
    gateway_downlink TO {{operator}};

-- The writer commits a batch's rows with the stream's mark and the gateway's counters.
GRANT SELECT, INSERT, UPDATE ON gateway_sync_marks TO {{writer}};
GRANT SELECT (id, tenant_id, batches_received, bytes_received, clock_corrected_at) ON gateways TO {{writer}};
GRANT UPDATE (last_seen_at, last_batch_at, batches_received, bytes_received, clock_offset_ms, clock_corrected_at)
    ON gateways TO {{writer}};

-- The gateway a client certificate belongs to, whether it may still be used; touches last_seen_at
-- (at most every few seconds, so a busy gateway does not rewrite its row on every request).
CREATE FUNCTION pulse_identity_gateway_certificate(cert_serial numeric, gateway uuid)
RETURNS TABLE (tenant_id uuid, gateway_id uuid, site_id uuid, gateway_status text, revoked boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    UPDATE gateways g SET last_seen_at = now()
    WHERE g.id = gateway AND (g.last_seen_at IS NULL OR g.last_seen_at < now() - interval '5 seconds');
    RETURN QUERY
    SELECT c.tenant_id, c.gateway_id, g.site_id, g.status, c.revoked_at IS NOT NULL
    FROM gateway_certificates c JOIN gateways g ON g.id = c.gateway_id AND g.tenant_id = c.tenant_id
    WHERE c.serial = cert_serial AND c.gateway_id = gateway;
END
$$;

-- An enrollment token, if it can still be used: its tenant and gateway. Does not consume it (the
-- enrollment consumes it in the tenant's transaction, together with the certificate it records).
CREATE FUNCTION pulse_identity_enrollment_token(hash text)
RETURNS TABLE (tenant_id uuid, gateway_id uuid, gateway_name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT t.tenant_id, t.gateway_id, g.name
    FROM gateway_enrollment_tokens t JOIN gateways g ON g.id = t.gateway_id AND g.tenant_id = t.tenant_id
    WHERE t.token_hash = hash AND t.used_at IS NULL AND t.expires_at > now()
$$;

GRANT SELECT, UPDATE ON gateways TO {{identity}};
GRANT SELECT ON gateway_certificates, gateway_enrollment_tokens TO {{identity}};

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pulse_identity_gateway_certificate(numeric, uuid)', 'pulse_identity_enrollment_token(text)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f, {{identity_lit}});
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I', f, {{app_lit}}, {{operator_lit}});
    END LOOP;
END
$$;
