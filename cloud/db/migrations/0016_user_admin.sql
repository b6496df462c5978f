-- Tenant user administration and activation-code revocation (issue 20): invitations and password resets by one-time link, last
-- sign-in, and sessions that stop working when an account is disabled, removed or signed out
-- everywhere: access tokens carry the account's session epoch, and each of those changes moves it on.

ALTER TABLE users
    ADD COLUMN last_sign_in_at      timestamptz,
    ADD COLUMN session_epoch        integer NOT NULL DEFAULT 0,
    ADD COLUMN created_by           text NOT NULL DEFAULT '',
    ADD COLUMN oidc_subject         text UNIQUE;     -- '<issuer> <sub>' of an account that signs in through OIDC

-- A tenant admin revokes activation codes that were handed out but should not be used (a lost list):
-- the code's expiry is brought forward to the revocation, so every door that checks the expiry refuses it.
ALTER TABLE activation_codes ADD COLUMN revoked_at timestamptz;

-- One-time links: only a hash is kept; the link is mailed (and shown once to whoever made it).
CREATE TABLE user_links (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('invite', 'reset')),
    token_hash  text NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_links_user ON user_links (user_id);
ALTER TABLE user_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_links USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON user_links TO {{app}}, {{operator}};
GRANT SELECT, UPDATE ON user_links TO {{identity}};
GRANT UPDATE ON users TO {{identity}};
-- a tenant admin revokes the refresh tokens of the users they disable (RLS keeps it to the tenant)
GRANT SELECT, UPDATE ON refresh_tokens TO {{app}};

-- Per request: is this account still allowed to use its access tokens?
CREATE FUNCTION pulse_identity_session(uid uuid)
RETURNS TABLE (disabled boolean, epoch integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT disabled, session_epoch FROM users WHERE id = uid $$;

CREATE FUNCTION pulse_identity_signed_in(uid uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ UPDATE users SET last_sign_in_at = now() WHERE id = uid $$;

-- What a one-time link is for (the accept page shows the email); nothing if unknown.
CREATE FUNCTION pulse_identity_link(hash text)
RETURNS TABLE (kind text, email text, tenant_id uuid, expires_at timestamptz, used boolean, disabled boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT l.kind, u.email, l.tenant_id, l.expires_at, l.used_at IS NOT NULL, u.disabled
    FROM user_links l JOIN users u ON u.id = l.user_id WHERE l.token_hash = hash
$$;

-- Spends a link and sets the password: 'ok', 'unknown', 'used', 'expired' or 'disabled'. A spent
-- link also ends the user's other sessions (a reset is often about a stolen password) and spends
-- the user's other open links.
CREATE FUNCTION pulse_identity_link_use(hash text, pw_hash text, at timestamptz)
RETURNS TABLE (outcome text, user_id uuid, tenant_id uuid, kind text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE l user_links%ROWTYPE; off boolean;
BEGIN
    SELECT * INTO l FROM user_links WHERE token_hash = hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid, NULL::uuid, NULL::text; RETURN;
    END IF;
    IF l.used_at IS NOT NULL THEN
        RETURN QUERY SELECT 'used'::text, l.user_id, l.tenant_id, l.kind; RETURN;
    END IF;
    IF l.expires_at <= at THEN
        RETURN QUERY SELECT 'expired'::text, l.user_id, l.tenant_id, l.kind; RETURN;
    END IF;
    SELECT u.disabled INTO off FROM users u WHERE u.id = l.user_id;
    IF off THEN
        RETURN QUERY SELECT 'disabled'::text, l.user_id, l.tenant_id, l.kind; RETURN;
    END IF;
    UPDATE user_links SET used_at = at WHERE user_links.user_id = l.user_id AND used_at IS NULL;
    UPDATE users SET password_hash = pw_hash, session_epoch = session_epoch + 1 WHERE id = l.user_id;
    UPDATE refresh_tokens SET revoked_at = now() WHERE refresh_tokens.user_id = l.user_id AND revoked_at IS NULL;
    RETURN QUERY SELECT 'ok'::text, l.user_id, l.tenant_id, l.kind;
END
$$;

-- "Forgot password" from the sign-in page: a fresh link for an enabled account with this email
-- (an invitation again if it never signed in); nothing for an unknown, disabled or single-sign-on-only
-- account (the caller answers the same either way). The account's earlier open links stop working.
CREATE FUNCTION pulse_identity_reset_request(login text, hash text, expires timestamptz, actor text)
RETURNS TABLE (user_id uuid, tenant_id uuid, email text, kind text, tenant_name text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE u users%ROWTYPE; k text;
BEGIN
    SELECT * INTO u FROM users WHERE lower(users.email) = lower(login) AND NOT users.disabled;
    IF NOT FOUND OR (u.password_hash IS NULL AND u.oidc_subject IS NOT NULL) THEN
        RETURN;
    END IF;
    k := CASE WHEN u.password_hash IS NULL AND u.last_sign_in_at IS NULL THEN 'invite' ELSE 'reset' END;
    UPDATE user_links SET used_at = now() WHERE user_links.user_id = u.id AND used_at IS NULL;
    INSERT INTO user_links (user_id, tenant_id, kind, token_hash, expires_at, created_by) VALUES (u.id, u.tenant_id, k, hash, expires, actor);
    RETURN QUERY SELECT u.id, u.tenant_id, u.email, k, coalesce((SELECT t.name FROM tenants t WHERE t.id = u.tenant_id), 'Pulse');
END
$$;
GRANT INSERT ON user_links TO {{identity}};

-- "Sign out everywhere" for one's own account.
CREATE FUNCTION pulse_identity_sign_out_all(uid uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    UPDATE users SET session_epoch = session_epoch + 1 WHERE id = uid;
    UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = uid AND revoked_at IS NULL;
$$;

-- Console sign-in through the configured OIDC issuer (the cloud verified the ID token): the account
-- of this subject, made on first sign-in, with tenant and roles from the token's claims each time.
-- An existing account with the same email is linked when it is in the same tenant. Outcomes: 'ok',
-- 'disabled', 'no_tenant' (the claimed tenant does not exist), 'email_taken' (another tenant's).
CREATE FUNCTION pulse_identity_oidc_user(subject text, mail text, tid uuid, claimed text[], display text)
RETURNS TABLE (outcome text, id uuid, tenant_id uuid, roles text[], disabled boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE u users%ROWTYPE;
BEGIN
    IF tid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = tid) THEN
        RETURN QUERY SELECT 'no_tenant'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::boolean; RETURN;
    END IF;
    SELECT * INTO u FROM users WHERE users.oidc_subject = subject FOR UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO u FROM users WHERE lower(users.email) = lower(mail) FOR UPDATE;
        IF FOUND AND u.tenant_id IS DISTINCT FROM tid THEN
            RETURN QUERY SELECT 'email_taken'::text, NULL::uuid, NULL::uuid, NULL::text[], NULL::boolean; RETURN;
        END IF;
    END IF;
    IF u.id IS NULL THEN
        INSERT INTO users (tenant_id, email, roles, display_name, oidc_subject, created_by)
        VALUES (tid, mail, claimed, display, subject, 'oidc') RETURNING * INTO u;
    ELSIF u.disabled THEN
        RETURN QUERY SELECT 'disabled'::text, u.id, u.tenant_id, u.roles, true; RETURN;
    ELSE
        UPDATE users SET oidc_subject = subject, tenant_id = tid, roles = claimed,
               session_epoch = users.session_epoch + CASE WHEN users.roles = claimed AND users.tenant_id IS NOT DISTINCT FROM tid THEN 0 ELSE 1 END,
               display_name = CASE WHEN display = '' THEN users.display_name ELSE display END
        WHERE users.id = u.id RETURNING * INTO u;
    END IF;
    UPDATE users SET last_sign_in_at = now() WHERE users.id = u.id;
    RETURN QUERY SELECT 'ok'::text, u.id, u.tenant_id, u.roles, u.disabled;
END
$$;
GRANT INSERT ON users TO {{identity}};
GRANT SELECT ON tenants TO {{identity}};

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pulse_identity_session(uuid)', 'pulse_identity_signed_in(uuid)', 'pulse_identity_link(text)',
                             'pulse_identity_link_use(text, text, timestamptz)', 'pulse_identity_sign_out_all(uuid)',
                             'pulse_identity_oidc_user(text, text, uuid, text[], text)',
                             'pulse_identity_reset_request(text, text, timestamptz, text)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f, {{identity_lit}});
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I', f, {{app_lit}}, {{operator_lit}});
    END LOOP;
END
$$;
