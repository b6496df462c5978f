-- The telemetry archive's checkpoint and the report history (issue 21).
--
-- archive_days: one row per tenant and UTC day whose telemetry is in the archive (bronze, silver,
-- gold). The archiver writes a day's files under deterministic names first and inserts this row
-- last, in its own transaction: a crash before the insert leaves files that the next pass
-- overwrites with the same content (no duplicate), a crash after it leaves a day that is done.
--
-- report_runs: every SLA report and export, whoever or whatever asked for it (a person, or
-- "schedule" for the daily run): parameters, status, and for an SLA report its figures.

CREATE TABLE archive_days (
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day          date NOT NULL,
    rows         bigint NOT NULL CHECK (rows >= 0),       -- telemetry rows of the day (bronze)
    points       bigint NOT NULL CHECK (points >= 0),     -- metric values after de-duplication (silver)
    bytes        bigint NOT NULL CHECK (bytes >= 0),      -- Parquet bytes written for the day
    archived_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, day)
);

CREATE TABLE report_runs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('sla', 'export')),
    params        jsonb NOT NULL DEFAULT '{}',
    status        text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    requested_by  text NOT NULL,
    created_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    result        jsonb,
    error         text
);
CREATE INDEX report_runs_tenant ON report_runs (tenant_id, created_at DESC, id DESC);
-- one scheduled SLA report per tenant and day, even with several cloud processes
CREATE UNIQUE INDEX report_runs_scheduled ON report_runs (tenant_id, (params ->> 'day'))
    WHERE requested_by = 'schedule';

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['archive_days', 'report_runs']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = pulse_current_tenant())'
                       ' WITH CHECK (tenant_id = pulse_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT ON archive_days TO {{app}};
GRANT SELECT, INSERT, UPDATE ON report_runs TO {{app}};
GRANT SELECT ON archive_days, report_runs TO {{operator}};
