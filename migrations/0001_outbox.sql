-- Events accepted and not yet deleted. `seq` is assigned by the single
-- writer task, so seq order is commit order. `body` is the canonical JSON.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    fidelity    INTEGER NOT NULL,
    session_id  TEXT,
    received_ms INTEGER NOT NULL,
    body        BLOB    NOT NULL
);

-- Client-chosen ids accepted within ingest.dedup_window; kept after their
-- event left the outbox. Keyed by seq, which also orders them by age.
CREATE TABLE dedup (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    accepted_ms INTEGER NOT NULL
);

-- Running totals, kept in step with `events` in every write transaction so
-- that start-up never scans the backlog and seq never goes back.
CREATE TABLE outbox_state (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 0),
    last_seq    INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    byte_count  INTEGER NOT NULL
);
INSERT INTO outbox_state (singleton, last_seq, event_count, byte_count) VALUES (0, 0, 0, 0);

-- Delivery progress of each sink, in the same database as the events so a
-- cursor and the events it points at can never disagree after a crash.
CREATE TABLE sink_cursors (
    sink          TEXT    PRIMARY KEY,
    -- Every event with seq <= delivered_seq is delivered (or dead-lettered).
    delivered_seq INTEGER NOT NULL,
    -- The fixed range of the batch in flight, recorded before its first attempt.
    batch_first   INTEGER,
    batch_last    INTEGER,
    updated_ms    INTEGER NOT NULL
) WITHOUT ROWID;
