-- Replicas that share only this database (issue 26): cache invalidations sent by the database
-- itself when the data changes (so every change, whatever made it, reaches every process when it
-- commits), shared rate-limit buckets, and who runs which once-per-cluster job.
--
-- Nothing here is tenant data: buckets are keyed by device or tenant uuid, leases by job name.
-- The app role reaches both only through the SECURITY DEFINER functions below; it has no grant on
-- the tables.

-- ---- invalidations: channel pulse_invalidate, payload {"o": "db", "m": [{"k": kind, "id": uuid}]}
CREATE FUNCTION pulse_cluster_invalidate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text := TG_ARGV[0];
    row  record;
    id   uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
    -- one statement per kind: PL/pgSQL plans each only when it runs, so no table needs the others' columns
    IF kind = 'tenant' THEN
        id := row.tenant_id;
    ELSIF kind = 'gateway' THEN
        id := row.gateway_id;
    ELSE
        id := row.id;
    END IF;
    PERFORM pg_notify('pulse_invalidate', json_build_object('o', 'db', 'm', json_build_array(json_build_object('k', kind, 'id', id)))::text);
    RETURN NULL;
END
$$;

-- a credential revoked, rotated or deleted
CREATE TRIGGER cluster_invalidate AFTER UPDATE OR DELETE ON device_credentials
    FOR EACH ROW EXECUTE FUNCTION pulse_cluster_invalidate('credential');
-- a device disabled, decommissioned, re-enabled or deleted
CREATE TRIGGER cluster_invalidate AFTER UPDATE OF status OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION pulse_cluster_invalidate('device');
-- something queued for a gateway: the replica holding its long-poll answers at once
CREATE TRIGGER cluster_invalidate AFTER INSERT ON gateway_downlink
    FOR EACH ROW EXECUTE FUNCTION pulse_cluster_invalidate('gateway');
-- a tenant's subscriptions changed (suspended, expired, renewed): what its data is entitled to
CREATE TRIGGER cluster_invalidate AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION pulse_cluster_invalidate('tenant');

-- ---- shared token buckets
CREATE TABLE cluster_rate_buckets (
    key      text PRIMARY KEY,                 -- 'device:<uuid>' or 'tenant:<uuid>'
    tokens   double precision NOT NULL,
    rate     double precision NOT NULL CHECK (rate > 0),
    burst    double precision NOT NULL CHECK (burst > 0),
    updated  timestamptz NOT NULL
);

-- Take between `need` and `want` tokens from bucket `k` (created full), refilled at `rate`/s up
-- to `burst` by the database's clock. Grants nothing when fewer than `need` are there, and says
-- in how many seconds `need` (at most `burst`) will be.
CREATE FUNCTION pulse_rate_take(k text, want double precision, need double precision, r double precision, b double precision)
RETURNS TABLE (granted double precision, retry_after_s double precision)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    at timestamptz := clock_timestamp();
    have double precision;
BEGIN
    INSERT INTO cluster_rate_buckets AS c (key, tokens, rate, burst, updated) VALUES (k, b, r, b, at)
    ON CONFLICT (key) DO UPDATE SET
        tokens = least(EXCLUDED.burst, c.tokens + greatest(0, extract(epoch FROM at - c.updated)) * c.rate),
        rate = EXCLUDED.rate, burst = EXCLUDED.burst, updated = at
    RETURNING c.tokens INTO have;
    IF have >= need THEN
        granted := least(want, have);
        retry_after_s := 0;
        UPDATE cluster_rate_buckets SET tokens = have - granted WHERE key = k;
    ELSE
        granted := 0;
        retry_after_s := (least(need, b) - have) / r;
    END IF;
    RETURN NEXT;
END
$$;

-- Give back tokens a process leased and did not spend.
CREATE FUNCTION pulse_rate_give(ks text[], amounts double precision[]) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    UPDATE cluster_rate_buckets c SET tokens = least(c.burst, c.tokens + u.amount)
    FROM unnest(ks, amounts) AS u(key, amount) WHERE c.key = u.key
$$;

-- Forget buckets that have refilled (the same as absent); returns how many.
CREATE FUNCTION pulse_rate_forget() RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM cluster_rate_buckets
        WHERE tokens + extract(epoch FROM clock_timestamp() - updated) * rate >= burst RETURNING 1
    ) SELECT count(*) FROM gone
$$;

-- ---- once-per-cluster jobs: who holds each (the lock itself is a session advisory lock)
CREATE TABLE cluster_leases (
    job         text PRIMARY KEY,
    holder      text NOT NULL,
    since       timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);

CREATE FUNCTION pulse_cluster_lease_take(j text, node text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    INSERT INTO cluster_leases (job, holder, since, renewed_at) VALUES (j, node, clock_timestamp(), clock_timestamp())
    ON CONFLICT (job) DO UPDATE SET holder = EXCLUDED.holder, since = EXCLUDED.since, renewed_at = EXCLUDED.renewed_at
$$;

CREATE FUNCTION pulse_cluster_lease_renew(js text[], node text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ UPDATE cluster_leases SET renewed_at = clock_timestamp() WHERE job = ANY (js) AND holder = node $$;

-- Forced row-level security like every table: only the owner (these functions) sees rows; the
-- operator role reads them through its bypass.
ALTER TABLE cluster_rate_buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE cluster_rate_buckets FORCE ROW LEVEL SECURITY;
CREATE POLICY cluster_owner ON cluster_rate_buckets TO CURRENT_USER USING (true) WITH CHECK (true);
ALTER TABLE cluster_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE cluster_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY cluster_owner ON cluster_leases TO CURRENT_USER USING (true) WITH CHECK (true);

REVOKE ALL ON cluster_rate_buckets, cluster_leases FROM PUBLIC;
GRANT SELECT ON cluster_rate_buckets, cluster_leases TO {{operator}};

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pulse_rate_take(text, double precision, double precision, double precision, double precision)',
                             'pulse_rate_give(text[], double precision[])', 'pulse_rate_forget()',
                             'pulse_cluster_lease_take(text, text)', 'pulse_cluster_lease_renew(text[], text)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, {{app_lit}});
    END LOOP;
END
$$;
