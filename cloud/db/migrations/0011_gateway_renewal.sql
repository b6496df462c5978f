-- Renewal keeps a gateway's key and retires what it replaces (issue 15): a renewed certificate's
-- predecessor stops working at retires_at (after an overlap, so a gateway that lost the answer can
-- still use its old certificate for a while); the identity check treats a retired certificate like
-- a revoked one but says why. A gateway has at most two live certificates: the newest and the one
-- that was used to renew it.

ALTER TABLE gateway_certificates ADD COLUMN retires_at timestamptz;

DROP FUNCTION pulse_identity_gateway_certificate(numeric, uuid);

CREATE FUNCTION pulse_identity_gateway_certificate(cert_serial numeric, gateway uuid)
RETURNS TABLE (tenant_id uuid, gateway_id uuid, site_id uuid, gateway_status text, revoked boolean, superseded boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    UPDATE gateways g SET last_seen_at = now()
    WHERE g.id = gateway AND (g.last_seen_at IS NULL OR g.last_seen_at < now() - interval '5 seconds');
    RETURN QUERY
    SELECT c.tenant_id, c.gateway_id, g.site_id, g.status, c.revoked_at IS NOT NULL,
           c.retires_at IS NOT NULL AND c.retires_at <= now()
    FROM gateway_certificates c JOIN gateways g ON g.id = c.gateway_id AND g.tenant_id = c.tenant_id
    WHERE c.serial = cert_serial AND c.gateway_id = gateway;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION pulse_identity_gateway_certificate(numeric, uuid) OWNER TO %I', {{identity_lit}});
    REVOKE ALL ON FUNCTION pulse_identity_gateway_certificate(numeric, uuid) FROM PUBLIC;
    EXECUTE format('GRANT EXECUTE ON FUNCTION pulse_identity_gateway_certificate(numeric, uuid) TO %I, %I', {{app_lit}}, {{operator_lit}});
END
$$;
