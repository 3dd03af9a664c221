-- The body log (`outbox.bodies = "segments"`, see src/outbox/bodies.rs):
-- a body stored there leaves `body` empty and names its place in the log.
ALTER TABLE events ADD COLUMN body_at INTEGER;
ALTER TABLE events ADD COLUMN body_len INTEGER;
-- The end of the log as of the last commit: anything past it is a group
-- that never committed.
ALTER TABLE outbox_state ADD COLUMN log_end INTEGER NOT NULL DEFAULT 0;
-- Each segment file of the log (named by the log offset it starts at) and
-- the newest event in it: a segment goes once every event up to there is deleted.
CREATE TABLE body_segments (
    start    INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
