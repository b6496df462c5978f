-- Telemetry. With TimescaleDB (when CREATE EXTENSION timescaledb succeeds): a hypertable with daily
-- chunks, compression after 7 days, retention set by pulse_telemetry_maintain(). Without it: native
-- range partitioning by day, partitions created ahead and dropped after retention by the same
-- function, and a default partition so that no accepted row is ever refused for lack of a partition.
-- The table and its queries are the same either way.

DO $$
DECLARE
    columns text := $cols$(
        time         timestamptz NOT NULL,
        tenant_id    uuid NOT NULL,
        device_id    text NOT NULL,
        msg_type     text NOT NULL,
        metrics      jsonb NOT NULL DEFAULT '{}',
        tags         jsonb,
        body         jsonb,
        seq          bigint,
        gateway_id   uuid,
        source       text NOT NULL,
        received_at  timestamptz NOT NULL
    )$cols$;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'TimescaleDB is not available (%); telemetry uses native partitioning', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'CREATE TABLE telemetry ' || columns;
        PERFORM create_hypertable('telemetry', 'time', chunk_time_interval => interval '1 day');
        BEGIN
            EXECUTE 'ALTER TABLE telemetry SET (timescaledb.compress, timescaledb.compress_segmentby = ''tenant_id, device_id'')';
            PERFORM add_compression_policy('telemetry', interval '7 days');
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'telemetry compression could not be enabled: %', SQLERRM;
        END;
    ELSE
        EXECUTE 'CREATE TABLE telemetry ' || columns || ' PARTITION BY RANGE (time)';
        CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
    END IF;
END
$$;

CREATE INDEX telemetry_device_time ON telemetry (tenant_id, device_id, time DESC);

ALTER TABLE telemetry ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());

GRANT SELECT ON telemetry TO {{app}};
GRANT SELECT ON telemetry TO {{operator}};
GRANT INSERT ON telemetry TO {{writer}};

-- Keeps telemetry storage in shape; run by the database owner (Pulse calls it at start and every
-- PULSE_MAINTENANCE_INTERVAL_S). Returns one row per action taken.
CREATE FUNCTION pulse_telemetry_maintain(ahead_days int, retention_days int, at timestamptz DEFAULT now())
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
    PERFORM pg_advisory_xact_lock(hashtext('pulse_telemetry_maintain'));  -- one maintainer at a time
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass) THEN
        -- TimescaleDB: its own jobs compress and drop chunks; keep the retention figure in step.
        EXECUTE 'SELECT (config->>''drop_after'')::interval FROM timescaledb_information.jobs'
                ' WHERE proc_name = ''policy_retention'' AND hypertable_name = ''telemetry'''
            INTO current_drop;
        IF current_drop IS DISTINCT FROM make_interval(days => retention_days) THEN
            EXECUTE 'SELECT remove_retention_policy(''telemetry'', if_exists => true)';
            EXECUTE format('SELECT add_retention_policy(''telemetry'', %L::interval)', retention_days || ' days');
            RETURN QUERY SELECT 'retention'::text, retention_days || ' days';
        END IF;
        RETURN;
    END IF;

    FOR i IN -1..ahead_days LOOP
        d := day0 + i;
        CONTINUE WHEN d < cutoff;
        pname := 'telemetry_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(pname) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', pname);
        -- rows that arrived before their partition existed sit in the default partition: move them
        EXECUTE format('WITH m AS (DELETE FROM telemetry_default WHERE time >= %L AND time < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM m', lo, hi, pname);
        GET DIAGNOSTICS moved = ROW_COUNT;
        EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', pname, lo, hi);
        RETURN QUERY SELECT 'created'::text, pname || CASE WHEN moved > 0 THEN ' (' || moved || ' rows moved from default)' ELSE '' END;
    END LOOP;

    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        -- a partition holds one day; it expires when that whole day is older than the cutoff
        IF to_date(substr(part.relname, 12), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN QUERY SELECT 'dropped'::text, part.relname::text;
        END IF;
    END LOOP;

    DELETE FROM telemetry_default WHERE time < (cutoff::timestamp AT TIME ZONE 'UTC');
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved > 0 THEN
        RETURN QUERY SELECT 'expired'::text, 'telemetry_default (' || moved || ' rows)';
    END IF;
END
$$;
