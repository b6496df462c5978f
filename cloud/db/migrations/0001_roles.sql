-- Roles (cluster-wide; names carry the configured prefix so several databases can share a server).
--   {{app}}       the API's role: LOGIN, subject to row-level security (no BYPASSRLS)
--   {{operator}}  operators' bypass: LOGIN BYPASSRLS; Pulse writes an audit row for every use
--   {{writer}}    the telemetry writer: LOGIN BYPASSRLS (COPY FROM needs it), INSERT-only grants
--   {{identity}}  owner of the credential look-up functions: NOLOGIN BYPASSRLS
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{app_lit}}) THEN
        CREATE ROLE {{app}} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{operator_lit}}) THEN
        CREATE ROLE {{operator}} LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{writer_lit}}) THEN
        CREATE ROLE {{writer}} LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{identity_lit}}) THEN
        CREATE ROLE {{identity}} NOLOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO {{app}}, {{operator}}, {{writer}}, {{identity}};
