-- Gateway sync through the optional ingest stream (issue 26, cloud/sync/receive.py and
-- cloud/stream/consumer.py): how far each partition writer stored each gateway's records.
--
-- A gateway's telemetry and events batch is published to the stream before the gateway's
-- high-water mark (0005) commits; when that commit does not happen (JetStream or the database
-- failed, the replica died), the gateway sends the records again, in a batch of another size, and
-- some of them are published twice. The partition writer keeps, per (gateway, sync stream,
-- partition), the highest record sequence it stored, moved in the transaction that COPYs the rows,
-- and skips records at or below it. Why that is exact: consumer.py's docstring.
--
-- Not tenant data (as stream_marks, 0023): the writer role reads and moves it; the app role has
-- no grant.

CREATE TABLE stream_gateway_marks (
    gateway_id   uuid NOT NULL,
    sync_stream  smallint NOT NULL,
    partition    integer NOT NULL CHECK (partition >= 0),
    last_seq     bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, sync_stream, partition)
);

GRANT SELECT, INSERT, UPDATE ON stream_gateway_marks TO {{writer}};
GRANT SELECT ON stream_gateway_marks TO {{operator}};
