"""The gateway's one SQLite file: what tables it holds and how it is opened.

One file, WAL mode. Tables:

- ``devices``     per-device credentials (secret hashes, never secrets)
- ``streams``     one row per buffer stream: next sequence number, the cloud's acknowledged cursor,
                  what the quota dropped
- ``records``     buffered messages, keyed (stream, seq)
- ``dedupe``      per device, a ring of recent (device seq, payload) fingerprints
- ``quarantine``  refused messages with their code and raw bytes
- ``counters``    persisted counters (quarantine rows removed, ...)
- ``rules``       the rule set the gateway evaluates (``pulse gateway rules set``, later the downlink)
- ``rule_state``  per (rule, device): ``RuleState.to_dict()`` so a restart keeps windows and silence
- ``alerts``      local alerts (at most one open per (device, rule)); each action is also appended
                  to the ALERTS buffer stream, which syncs to the cloud

- ``downlink``    items received from the cloud (credentials applied at once; twin, commands and
                  rules kept for the parts that act on them), with what was done
- ``meta``        key/value: ``downlink_cursor`` (the last downlink item applied)
- ``twins``       per device: the gateway's copy of its twin (``twin.to_json``) and the cloud version
                  of the desired section it last took (edge/twin.py)
- ``commands``    commands received from the cloud, with their state and the last state recorded on
                  the TWIN buffer stream for the cloud (``synced``)
- ``mqtt_sessions``, ``mqtt_queue``  persistent MQTT sessions and their queued QoS 1 messages
                  (their DDL is ``pulse.broker.sessions.SCHEMA``, shared with the cloud's MQTT endpoint)
"""

from __future__ import annotations

from pulse.broker.sessions import SCHEMA as SESSION_SCHEMA

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    note        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS streams (
    stream        INTEGER PRIMARY KEY,
    next_seq      INTEGER NOT NULL,
    acked_seq     INTEGER NOT NULL,
    dropped_count INTEGER NOT NULL DEFAULT 0,
    dropped_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    stream      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    type        TEXT NOT NULL,
    device_seq  INTEGER,
    received_ms INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    raw         BLOB NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    device_id TEXT NOT NULL,
    slot      INTEGER NOT NULL,
    fp        INTEGER NOT NULL,
    PRIMARY KEY (device_id, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    device_id   TEXT,
    topic       TEXT NOT NULL,
    code        TEXT NOT NULL,
    message     TEXT NOT NULL,
    raw         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    id          TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_state (
    rule_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    state      TEXT NOT NULL,
    PRIMARY KEY (rule_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    severity     TEXT NOT NULL,
    state        TEXT NOT NULL,
    flapping     INTEGER NOT NULL DEFAULT 0,
    explanation  TEXT NOT NULL,
    opened_ms    INTEGER NOT NULL,
    closed_ms    INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (device_id, rule_id) WHERE state <> 'closed';

CREATE TABLE IF NOT EXISTS downlink (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    status      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS twins (
    device_id      TEXT PRIMARY KEY,
    document       TEXT NOT NULL,
    cloud_version  INTEGER NOT NULL DEFAULT 0,
    updated_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    document    TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    synced      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_device ON commands (device_id, state);
""" + SESSION_SCHEMA

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=10000", "PRAGMA foreign_keys=ON")


def synchronous_pragma(mode: str) -> str:
    return f"PRAGMA synchronous={'FULL' if mode == 'full' else 'NORMAL'}"
