-- Subscriptions with device limits, and activation codes for field provisioning (issue 20).
-- The lifecycle is pulse.protocol.subscriptions; these tables hold its state and history.

CREATE TABLE subscriptions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('MAIN', 'ADDON', 'TRIAL', 'TEMPORARY')),
    state         text NOT NULL CHECK (state IN ('TRIAL', 'ACTIVE', 'GRACE', 'SUSPENDED', 'EXPIRED')),
    device_limit  int NOT NULL CHECK (device_limit BETWEEN 0 AND 10000000),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL CHECK (ends_at > starts_at),
    parent        uuid,                               -- an ADDON's MAIN
    project       text NOT NULL DEFAULT '' CHECK (length(project) <= 200),   -- what a TEMPORARY one is for
    notices       text[] NOT NULL DEFAULT '{}',      -- renewal notices sent in this term
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, parent) REFERENCES subscriptions (tenant_id, id) ON DELETE CASCADE,
    CHECK ((kind = 'ADDON') = (parent IS NOT NULL))
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id, state);

-- Every change of a subscription: who (an operator, or "clock" for the worker), from, to, why.
CREATE TABLE subscription_history (
    id            bigserial PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subscription  uuid NOT NULL,
    at            timestamptz NOT NULL,
    actor         text NOT NULL,
    action        text NOT NULL,
    before_state  text,
    after_state   text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}',
    FOREIGN KEY (tenant_id, subscription) REFERENCES subscriptions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX subscription_history_sub ON subscription_history (tenant_id, subscription, at DESC, id DESC);

-- Activation codes: only a hash is kept; the code is shown once when the batch is made.
CREATE TABLE activation_codes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    batch       uuid NOT NULL,
    code_hash   text NOT NULL UNIQUE,
    site_id     uuid,
    tags        text[] NOT NULL DEFAULT '{}',
    profile     text,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    device      uuid REFERENCES devices (id) ON DELETE SET NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, site_id) REFERENCES sites (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX activation_codes_batch ON activation_codes (tenant_id, batch);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['subscriptions', 'subscription_history', 'activation_codes']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant())'
                       ' WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

-- Tenants read their subscriptions; the worker (in each tenant's transaction) moves them on and
-- records history; operators create and change them through the audited bypass role.
GRANT SELECT, UPDATE ON subscriptions TO {{app}};
GRANT SELECT, INSERT, UPDATE, DELETE ON subscriptions TO {{operator}};
GRANT SELECT, INSERT ON subscription_history TO {{app}}, {{operator}};
GRANT USAGE ON SEQUENCE subscription_history_id_seq TO {{app}}, {{operator}};
GRANT SELECT, INSERT, UPDATE ON activation_codes TO {{app}}, {{operator}};

-- The worker visits every tenant with a subscription that can still change.
CREATE FUNCTION pulse_subscription_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT DISTINCT tenant_id FROM subscriptions WHERE state <> 'EXPIRED' $$;

-- An activation code, if it can still be used: its tenant and id (the claim consumes it in the
-- tenant's transaction, together with the device it makes).
CREATE FUNCTION pulse_activation_code(hash text, at timestamptz)
RETURNS TABLE (tenant_id uuid, id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT tenant_id, id FROM activation_codes WHERE code_hash = hash AND used_at IS NULL AND expires_at > at $$;

GRANT SELECT ON subscriptions, activation_codes TO {{identity}};
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pulse_subscription_tenants()', 'pulse_activation_code(text, timestamptz)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f, {{identity_lit}});
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I', f, {{app_lit}}, {{operator_lit}});
    END LOOP;
END
$$;

-- Renewal notices travel the notification queue like alert events do.
ALTER TABLE notify_deliveries DROP CONSTRAINT notify_deliveries_event_check;
ALTER TABLE notify_deliveries ADD CONSTRAINT notify_deliveries_event_check
    CHECK (event IN ('opened', 'acknowledged', 'closed', 'test', 'escalated', 'notice'));
