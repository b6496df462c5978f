-- firmware_transfers: the last download of each artifact by each requester (a gateway or a direct
-- device), so that its bytes_served counts what arrived (issue 22). A download cut mid-way has written
-- bytes that were still in flight (socket buffers, the network) when the link went; the requester's
-- next request resumes with `Range: bytes=N-` from what it holds, and the bytes of the previous
-- download from N on are taken back off the artifact's count (docs/cloud.md "Firmware"). A request
-- without Range is a new download and takes nothing back.
CREATE TABLE firmware_transfers (
    tenant_id    uuid NOT NULL,
    artifact_id  uuid NOT NULL,
    requester    text NOT NULL,               -- 'gateway:<id>' or 'device:<id>'
    seq          bigint NOT NULL,             -- requests by this requester for this artifact, the last one's number
    start        bigint NOT NULL,             -- first byte of the last request
    resumed      boolean NOT NULL DEFAULT false,  -- it carried a Range: the requester holds the bytes before start
    sent         bigint NOT NULL DEFAULT 0,   -- bytes it wrote and counted (0 while it runs)
    complete     boolean NOT NULL DEFAULT false,  -- it wrote the last byte (and counted a download)
    running      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, artifact_id, requester),
    FOREIGN KEY (tenant_id, artifact_id) REFERENCES firmware_artifacts (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE firmware_transfers ENABLE ROW LEVEL SECURITY;
ALTER TABLE firmware_transfers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON firmware_transfers USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON firmware_transfers TO {{app}}, {{operator}};
