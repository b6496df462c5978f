-- Tenants, users, sessions, sites, gateways, devices, credentials, quarantine, audit log.
-- Every tenant-owned table: tenant_id, RLS enabled and forced, one policy on app.tenant_id.

CREATE FUNCTION pulse_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid REFERENCES tenants (id) ON DELETE CASCADE,   -- NULL for operators
    email          text NOT NULL,
    password_hash  text,                                            -- NULL: external (OIDC) only
    roles          text[] NOT NULL CHECK (roles <@ ARRAY['customer', 'tenant-admin', 'operator', 'operator-admin']),
    display_name   text NOT NULL DEFAULT '',
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    family      uuid NOT NULL,
    token_hash  text NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE sites (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    address     text NOT NULL DEFAULT '',
    latitude    double precision,
    longitude   double precision,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE gateways (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id       uuid,
    name          text NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'revoked')),
    last_seen_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, site_id) REFERENCES sites (tenant_id, id) ON DELETE SET NULL (site_id)
);

CREATE TABLE devices (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id          text NOT NULL CHECK (device_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    name               text NOT NULL DEFAULT '',
    site_id            uuid,
    gateway_id         uuid,
    tags               text[] NOT NULL DEFAULT '{}',
    status             text NOT NULL DEFAULT 'provisioned'
                       CHECK (status IN ('provisioned', 'active', 'disabled', 'decommissioned')),
    attributes         jsonb NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    decommissioned_at  timestamptz,
    UNIQUE (tenant_id, device_id),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, site_id) REFERENCES sites (tenant_id, id) ON DELETE SET NULL (site_id),
    FOREIGN KEY (tenant_id, gateway_id) REFERENCES gateways (tenant_id, id) ON DELETE SET NULL (gateway_id)
);
CREATE INDEX devices_tags ON devices USING gin (tags);
CREATE INDEX devices_site ON devices (tenant_id, site_id);

CREATE TABLE device_credentials (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL,
    device       uuid NOT NULL,
    secret_hash  text NOT NULL,            -- sha256 of a 256-bit random secret
    created_at   timestamptz NOT NULL DEFAULT now(),
    rotated_at   timestamptz,
    revoked_at   timestamptz,
    FOREIGN KEY (tenant_id, device) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX device_credentials_device ON device_credentials (device);

CREATE TABLE quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    device_id    text,
    gateway_id   uuid,
    source       text NOT NULL,            -- 'http' | 'gateway' | ...
    code         text NOT NULL,            -- protocol/errors.py Code
    reason       text NOT NULL,
    raw          bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_tenant_time ON quarantine (tenant_id, received_at DESC);

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    tenant_id  uuid,                        -- NULL: not about one tenant
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    detail     jsonb NOT NULL DEFAULT '{}',
    bypass     boolean NOT NULL DEFAULT false  -- written by the operator (RLS-bypassing) path
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at DESC);

-- Row-level security
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (id = pulse_current_tenant());

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'refresh_tokens', 'sites', 'gateways', 'devices', 'device_credentials',
                             'quarantine', 'audit_log']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant()) '
                       'WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

-- Grants: the app reads and writes its tenant's rows; the audit log is append-only for it.
GRANT SELECT ON tenants TO {{app}};
GRANT SELECT, INSERT, UPDATE, DELETE ON users, sites, gateways, devices, device_credentials TO {{app}};
GRANT SELECT ON quarantine TO {{app}};
GRANT SELECT, INSERT ON audit_log TO {{app}};
GRANT EXECUTE ON FUNCTION pulse_current_tenant() TO {{app}}, {{operator}}, {{writer}}, {{identity}};

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {{operator}};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {{operator}};

GRANT INSERT ON quarantine TO {{writer}};

GRANT SELECT ON users, devices, device_credentials TO {{identity}};
GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO {{identity}};
