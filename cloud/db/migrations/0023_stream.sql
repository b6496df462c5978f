-- The optional ingest stream (issue 26, cloud/stream/): how far each partition of the stream is
-- stored. A partition writer commits a batch's rows and its partition's mark (the last JetStream
-- stream sequence it stored) in one transaction, and skips every message at or below the mark: a
-- batch redelivered after a crash, a lost acknowledgement or a takeover writes nothing twice. The
-- gateway sync high-water mark (0005) is the same contract for gateways.
--
-- Not tenant data: one row per (stream, subject). Only the writer role reads and moves it.

CREATE TABLE stream_marks (
    stream      text NOT NULL,
    subject     text NOT NULL,
    last_seq    bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, subject)
);

GRANT SELECT, INSERT, UPDATE ON stream_marks TO {{writer}};
GRANT SELECT ON stream_marks TO {{operator}};
