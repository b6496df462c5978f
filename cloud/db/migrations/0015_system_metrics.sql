-- Pulse watching itself: system_metrics holds the platform's own figures, sampled every few
-- seconds by each cloud process (pulse.cloud.platform.sampler), for the operator's NOC and system
-- pages and the platform health rules. It is platform-wide data, owned by no tenant: no tenant_id,
-- no row-level security; the app role has no grant at all, the operator role (audited bypass)
-- reads it, the writer role inserts it.
--
-- Storage follows telemetry's engine (0004): a hypertable with daily chunks and a retention
-- policy when telemetry is one, otherwise native range partitioning by day with a default
-- partition, partitions created ahead and dropped after retention by pulse_system_metrics_maintain()
-- (Pulse calls it beside pulse_telemetry_maintain every PULSE_MAINTENANCE_INTERVAL_S).
--
-- Also here: pulse_platform_sample(), the database's share of a sample (queues, lag, dead letters,
-- gateways' backlog), aggregated across tenants by a SECURITY DEFINER function (owned by the
-- identity role, like pulse_alerting_tenants) so that the writer role needs no read grant on any
-- tenant table; and the platform tenant, which owns the platform
-- health rules and their alerts so that they go through the same rules engine and notification
-- routing as every tenant's.

DO $$
DECLARE
    columns text := $cols$(
        time    timestamptz NOT NULL,
        name    text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,99}$'),
        labels  jsonb NOT NULL DEFAULT '{}',
        value   double precision NOT NULL,
        source  text NOT NULL DEFAULT ''
    )$cols$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = 'public.telemetry'::regclass AND relkind = 'p') THEN
        EXECUTE 'CREATE TABLE system_metrics ' || columns || ' PARTITION BY RANGE (time)';
        CREATE TABLE system_metrics_default PARTITION OF system_metrics DEFAULT;
    ELSE
        EXECUTE 'CREATE TABLE system_metrics ' || columns;
        PERFORM create_hypertable('system_metrics', 'time', chunk_time_interval => interval '1 day');
    END IF;
END
$$;

CREATE INDEX system_metrics_name_time ON system_metrics (name, time DESC);

GRANT SELECT ON system_metrics TO {{operator}};
GRANT INSERT ON system_metrics TO {{writer}};

CREATE FUNCTION pulse_system_metrics_maintain(ahead_days int, retention_days int, at timestamptz DEFAULT now())
RETURNS TABLE (action text, target text)
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    day0    date := (at AT TIME ZONE 'UTC')::date;
    cutoff  date := day0 - retention_days;
    d       date;
    pname   text;
    lo      timestamptz;
    hi      timestamptz;
    part    record;
    moved   bigint;
    current_drop interval;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pulse_system_metrics_maintain'));
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'system_metrics'::regclass) THEN
        EXECUTE 'SELECT (config->>''drop_after'')::interval FROM timescaledb_information.jobs'
                ' WHERE proc_name = ''policy_retention'' AND hypertable_name = ''system_metrics'''
            INTO current_drop;
        IF current_drop IS DISTINCT FROM make_interval(days => retention_days) THEN
            EXECUTE 'SELECT remove_retention_policy(''system_metrics'', if_exists => true)';
            EXECUTE format('SELECT add_retention_policy(''system_metrics'', %L::interval)', retention_days || ' days');
            RETURN QUERY SELECT 'retention'::text, 'system_metrics ' || retention_days || ' days';
        END IF;
        RETURN;
    END IF;

    FOR i IN -1..ahead_days LOOP
        d := day0 + i;
        CONTINUE WHEN d < cutoff;
        pname := 'system_metrics_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(pname) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE system_metrics INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', pname);
        EXECUTE format('WITH m AS (DELETE FROM system_metrics_default WHERE time >= %L AND time < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM m', lo, hi, pname);
        GET DIAGNOSTICS moved = ROW_COUNT;
        EXECUTE format('ALTER TABLE system_metrics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', pname, lo, hi);
        RETURN QUERY SELECT 'created'::text, pname || CASE WHEN moved > 0 THEN ' (' || moved || ' rows moved from default)' ELSE '' END;
    END LOOP;

    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'system_metrics'::regclass AND c.relname ~ '^system_metrics_p[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        IF to_date(substr(part.relname, 17), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN QUERY SELECT 'dropped'::text, part.relname::text;
        END IF;
    END LOOP;

    DELETE FROM system_metrics_default WHERE time < (cutoff::timestamp AT TIME ZONE 'UTC');
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved > 0 THEN
        RETURN QUERY SELECT 'expired'::text, 'system_metrics_default (' || moved || ' rows)';
    END IF;
END
$$;

-- The database's share of one platform sample, aggregated across tenants (names as in
-- system_metrics). Gateways: one row per active gateway that reported a backlog, labelled with its
-- id and name (no tenant data beyond that).
CREATE FUNCTION pulse_platform_sample(at timestamptz, offline_after_s double precision)
RETURNS TABLE (name text, labels jsonb, value double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT 'notify_queue_depth', '{}'::jsonb,
           (SELECT count(*) FROM notify_deliveries WHERE status IN ('pending', 'sending'))::double precision
    UNION ALL
    SELECT 'notify_dead_letters', '{}'::jsonb,
           (SELECT count(*) FROM notify_deliveries WHERE status = 'dead')::double precision
    UNION ALL
    SELECT 'notify_failed_attempts', '{}'::jsonb,
           (SELECT count(*) FROM notify_attempts WHERE outcome <> 'delivered' AND at > $1 - interval '5 minutes')::double precision
    UNION ALL
    SELECT 'evaluation_lag_seconds', '{}'::jsonb,
           greatest(0, coalesce(extract(epoch FROM $1 - (SELECT min(created_at) FROM rule_outbox)), 0))::double precision
    UNION ALL
    SELECT 'gateways_connected', '{}'::jsonb,
           (SELECT count(*) FROM gateways WHERE status = 'active' AND last_seen_at > $1 - make_interval(secs => $2))::double precision
    UNION ALL
    SELECT 'gateway_backlog_records', jsonb_build_object('gateway', g.id::text, 'name', g.name),
           (SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(g.backlog) AS b(k, v))::double precision
    FROM gateways g WHERE g.status = 'active' AND g.backlog IS NOT NULL AND g.backlog <> '{}'::jsonb
    UNION ALL
    SELECT 'gateway_backlog_age_seconds', jsonb_build_object('gateway', g.id::text, 'name', g.name),
           greatest(0, extract(epoch FROM $1 - g.oldest_unsynced_at))::double precision
    FROM gateways g WHERE g.status = 'active' AND g.oldest_unsynced_at IS NOT NULL
    UNION ALL
    SELECT 'devices', jsonb_build_object('state', s.status), count(*)::double precision
    FROM device_states s GROUP BY s.status
    UNION ALL
    SELECT 'alerts_open', '{}'::jsonb,
           (SELECT count(*) FROM alerts WHERE state <> 'closed')::double precision
    UNION ALL
    SELECT 'alerts_opened', '{}'::jsonb,
           (SELECT count(*) FROM alerts WHERE opened_at > $1 - interval '1 minute' AND opened_at <= $1)::double precision
$$;
ALTER FUNCTION pulse_platform_sample(timestamptz, double precision) OWNER TO {{identity}};
GRANT SELECT ON notify_deliveries, notify_attempts, rule_outbox, gateways, device_states, alerts TO {{identity}};
REVOKE ALL ON FUNCTION pulse_platform_sample(timestamptz, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_platform_sample(timestamptz, double precision) TO {{writer}};

-- The platform tenant: owns the platform health rules (rule ids 'platform.*') and the alerts they
-- open, and the channels and routes that notify operators of them. Its id is fixed.
INSERT INTO tenants (id, slug, name) VALUES ('00000000-0000-0000-0000-00000000b0b0', 'pulse-platform', 'Pulse platform (operators)')
ON CONFLICT DO NOTHING;
