-- Fleet jobs and firmware artifacts (issue 22; docs/protocol.md "Jobs" and "Firmware").
-- A job's definition is pulse.protocol.jobs data; its devices' outcomes are rows. Artifacts' bytes
-- live on disk (PULSE_FIRMWARE_DIR/<tenant>/<id>); this table holds their manifest and counters.

CREATE TABLE firmware_artifacts (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version       text NOT NULL,
    model         text NOT NULL,
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size          bigint NOT NULL CHECK (size >= 0),
    signature     text,
    filename      text NOT NULL DEFAULT '',
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    bytes_served  bigint NOT NULL DEFAULT 0,     -- bytes sent to gateways and direct devices (the uplink)
    downloads     bigint NOT NULL DEFAULT 0,     -- completed (to the last byte) downloads
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, model, version)
);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    target            jsonb NOT NULL,   -- pulse.protocol.jobs.Target.to_json
    action            jsonb NOT NULL,   -- pulse.protocol.jobs.Action.to_json
    rollout           jsonb NOT NULL,   -- pulse.protocol.jobs.Rollout.to_json
    state             text NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'aborted', 'cancelled')),
    stage             int NOT NULL DEFAULT 0,
    stages            int NOT NULL,
    reason            text,
    rollback_of       uuid,
    started_at        timestamptz NOT NULL,
    stage_started_at  timestamptz NOT NULL,
    stage_done_at     timestamptz,
    finished_at       timestamptz,
    created_by        text NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, started_at DESC);
CREATE INDEX jobs_open ON jobs (tenant_id) WHERE state IN ('running', 'paused');

CREATE TABLE job_devices (
    tenant_id    uuid NOT NULL,
    job_id       uuid NOT NULL,
    device_id    text NOT NULL,
    stage        int NOT NULL,
    position     int NOT NULL,
    outcome      text NOT NULL DEFAULT 'queued'
                 CHECK (outcome IN ('queued', 'in_progress', 'succeeded', 'failed', 'timed_out', 'skipped', 'cancelled')),
    reason       text,
    command_id   text,                 -- command and firmware actions
    patch        jsonb,                -- desired actions: this device's patch (a rollback's differs per device)
    previous     jsonb,                -- desired actions: what the patched keys were before (for rollback)
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (tenant_id, job_id, device_id),
    FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX job_devices_stage ON job_devices (tenant_id, job_id, stage, position);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['firmware_artifacts', 'jobs', 'job_devices']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant())'
                       ' WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON firmware_artifacts, jobs, job_devices TO {{app}}, {{operator}};

-- The job runner visits every tenant with a job still under way, then works inside its RLS.
CREATE FUNCTION pulse_job_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT DISTINCT tenant_id FROM jobs WHERE state IN ('running', 'paused') $$;
ALTER FUNCTION pulse_job_tenants() OWNER TO {{identity}};
GRANT SELECT ON jobs TO {{identity}};
REVOKE ALL ON FUNCTION pulse_job_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_job_tenants() TO {{app}}, {{operator}};
