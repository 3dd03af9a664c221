-- Sessions a session-assembling sink (format = "openai_sessions") has seen
-- past its cursor but not written yet: one row per session instance (a
-- session id seen again after its session ended starts a new row). The
-- events themselves stay in `events` until their session is written; the
-- lowest `first_seq` here holds them (see outbox/retention.rs).
-- A rowid table on purpose: WITHOUT ROWID, SQLite's planner picked the
-- primary key (sink, ...) over sessions_open for the scan's updates, a walk
-- over every row of the sink per update (measured: 30x slower ingest with
-- 10,000 sessions open).
CREATE TABLE sessions (
    sink             TEXT    NOT NULL,
    -- The seq of the session's first event: names the instance.
    first_seq        INTEGER NOT NULL,
    session_id       TEXT    NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL,
    -- Events and body bytes the sink's scan counted (the lost count and
    -- the choice between one line and parts come from these).
    events           INTEGER NOT NULL,
    bytes            INTEGER NOT NULL,
    -- NULL while open; then the terminal event's type, or 'idle'.
    ended_by         TEXT,
    -- Parts already written cover the session's events up to here.
    written_upto     INTEGER NOT NULL DEFAULT 0,
    parts            INTEGER NOT NULL DEFAULT 0,
    events_written   INTEGER NOT NULL DEFAULT 0,
    -- Set while the session is in the object in flight: its events up to
    -- here are in it. Fixed before the first attempt, like a batch range.
    sending_upto     INTEGER,
    PRIMARY KEY (sink, first_seq)
);

CREATE INDEX sessions_open ON sessions (sink, session_id) WHERE ended_by IS NULL;
CREATE INDEX sessions_idle ON sessions (sink, last_received_ms) WHERE ended_by IS NULL;
CREATE INDEX sessions_ended ON sessions (sink, last_seq) WHERE ended_by IS NOT NULL;
CREATE INDEX sessions_sending ON sessions (sink, last_seq) WHERE sending_upto IS NOT NULL;
