-- Credential look-ups that must happen before a tenant is known (a device token, a login email,
-- a refresh token). They run as {{identity}} (SECURITY DEFINER) and return only what
-- authentication needs; the app role may execute them and nothing else across tenants.

CREATE FUNCTION pulse_identity_device_credential(credential uuid)
RETURNS TABLE (tenant_id uuid, device uuid, device_id text, device_status text, secret_hash text, revoked boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT c.tenant_id, d.id, d.device_id, d.status, c.secret_hash, c.revoked_at IS NOT NULL
    FROM device_credentials c JOIN devices d ON d.id = c.device AND d.tenant_id = c.tenant_id
    WHERE c.id = credential
$$;

CREATE FUNCTION pulse_identity_user_by_email(login text)
RETURNS TABLE (id uuid, tenant_id uuid, password_hash text, roles text[], disabled boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT id, tenant_id, password_hash, roles, disabled FROM users WHERE lower(email) = lower(login) $$;

CREATE FUNCTION pulse_identity_user(uid uuid)
RETURNS TABLE (id uuid, tenant_id uuid, password_hash text, roles text[], disabled boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT id, tenant_id, password_hash, roles, disabled FROM users WHERE id = uid $$;

CREATE FUNCTION pulse_identity_refresh_issue(uid uuid, tid uuid, fam uuid, hash text, expires timestamptz)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    INSERT INTO refresh_tokens (user_id, tenant_id, family, token_hash, expires_at) VALUES (uid, tid, fam, hash, expires)
$$;

-- Marks a refresh token used and says what it was: 'ok', 'expired', 'reused' (then its whole
-- family is revoked: someone replayed a rotated token), 'revoked' or 'unknown'.
CREATE FUNCTION pulse_identity_refresh_use(hash text)
RETURNS TABLE (outcome text, user_id uuid, family uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE r refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO r FROM refresh_tokens WHERE token_hash = hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid, NULL::uuid; RETURN;
    END IF;
    IF r.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, r.user_id, r.family; RETURN;
    END IF;
    IF r.used_at IS NOT NULL THEN
        UPDATE refresh_tokens SET revoked_at = now() WHERE refresh_tokens.family = r.family AND revoked_at IS NULL;
        RETURN QUERY SELECT 'reused'::text, r.user_id, r.family; RETURN;
    END IF;
    IF r.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired'::text, r.user_id, r.family; RETURN;
    END IF;
    UPDATE refresh_tokens SET used_at = now() WHERE id = r.id;
    RETURN QUERY SELECT 'ok'::text, r.user_id, r.family;
END
$$;

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pulse_identity_device_credential(uuid)', 'pulse_identity_user_by_email(text)',
                             'pulse_identity_user(uuid)', 'pulse_identity_refresh_issue(uuid, uuid, uuid, text, timestamptz)',
                             'pulse_identity_refresh_use(text)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f, {{identity_lit}});
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I', f, {{app_lit}}, {{operator_lit}});
    END LOOP;
END
$$;
