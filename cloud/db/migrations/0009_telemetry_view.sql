-- The app role reads telemetry only through a view, on both storage engines.
--
-- TimescaleDB refuses row-level security on a hypertable with compression (and compression on a
-- table with RLS), and its chunks inherit the hypertable's grants but not its policies: a role that
-- may read the hypertable reads every tenant's rows from the _timescaledb_internal chunks. So:
-- the app role has no grant on public.telemetry at all (so none on any chunk or partition), and
-- reads pulse_app.telemetry, a security_barrier view that keeps only the current tenant's rows
-- (app.tenant_id, set per transaction by the pool). pulse_app comes first on the app role's
-- search_path, so its queries name "telemetry" as before. The writer (INSERT, COPY) and the
-- operator (bypass, audited) keep their grants on the table.
--
-- On TimescaleDB the hypertable then drops its row-level security (0004 enabled it before any
-- compression) and turns compression on: chunks older than 7 days, segmented by tenant and device.
-- On native partitioning the table keeps its policy as a second guard for the owner's sessions.

CREATE SCHEMA pulse_app;
REVOKE ALL ON SCHEMA pulse_app FROM PUBLIC;
GRANT USAGE ON SCHEMA pulse_app TO {{app}};

CREATE VIEW pulse_app.telemetry WITH (security_barrier) AS
    SELECT time, tenant_id, device_id, msg_type, metrics, tags, body, seq, gateway_id, source, received_at
    FROM public.telemetry
    WHERE tenant_id = pulse_current_tenant();

REVOKE ALL ON public.telemetry FROM {{app}};
GRANT SELECT ON pulse_app.telemetry TO {{app}};

DO $$
BEGIN
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = pulse_app, public', {{app_lit}}, current_database());
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = 'public.telemetry'::regclass AND relkind = 'p') THEN
        RETURN;  -- native partitioning: nothing more
    END IF;
    DROP POLICY IF EXISTS tenant_isolation ON public.telemetry;
    ALTER TABLE public.telemetry NO FORCE ROW LEVEL SECURITY;
    ALTER TABLE public.telemetry DISABLE ROW LEVEL SECURITY;
    EXECUTE 'ALTER TABLE public.telemetry SET (timescaledb.compress,'
            ' timescaledb.compress_segmentby = ''tenant_id, device_id'', timescaledb.compress_orderby = ''time DESC'')';
    EXECUTE 'SELECT add_compression_policy(''public.telemetry'', interval ''7 days'', if_not_exists => true)';
END
$$;
