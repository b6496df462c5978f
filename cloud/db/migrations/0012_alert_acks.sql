-- Acknowledging from where people are paged (issue 18): who may act on alerts is a per-tenant role
-- permission the tenant-admins set, and the inbound routes (PagerDuty webhooks, Slack buttons) find
-- the channel a request names before they know its tenant.

-- One row per tenant and permission that differs from the default (pulse.cloud.alerts.actions.DEFAULTS).
CREATE TABLE tenant_permissions (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    permission  text NOT NULL CHECK (permission IN ('alerts.ack', 'alerts.close')),
    roles       text[] NOT NULL CHECK (roles <@ ARRAY['customer', 'tenant-admin', 'external']::text[]),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    PRIMARY KEY (tenant_id, permission)
);
ALTER TABLE tenant_permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_permissions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_permissions USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_permissions TO {{app}}, {{operator}};

-- An inbound request names a channel id in its URL; its tenant comes from the channel row, and the
-- request is believed only after its signature verifies with that channel's secret. This is the
-- only thing the inbound routes learn across tenants.
CREATE FUNCTION pulse_inbound_channel(cid uuid)
RETURNS TABLE (tenant_id uuid, kind text, config jsonb, enabled boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT tenant_id, kind, config, enabled FROM notify_channels WHERE id = cid $$;
GRANT SELECT ON notify_channels TO {{identity}};
ALTER FUNCTION pulse_inbound_channel(uuid) OWNER TO {{identity}};
REVOKE ALL ON FUNCTION pulse_inbound_channel(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_inbound_channel(uuid) TO {{app}}, {{operator}};

-- An email's acknowledge link names its tenant by slug (as notifications do); the link is believed
-- only after its signature verifies.
CREATE FUNCTION pulse_inbound_tenant(tslug text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT id FROM tenants WHERE slug = tslug $$;
GRANT SELECT ON tenants TO {{identity}};
ALTER FUNCTION pulse_inbound_tenant(text) OWNER TO {{identity}};
REVOKE ALL ON FUNCTION pulse_inbound_tenant(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_inbound_tenant(text) TO {{app}}, {{operator}};
