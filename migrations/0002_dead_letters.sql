-- Events a sink gave up on, with why. Never deleted by GC: only a
-- successful replay (or an operator) removes one.
CREATE TABLE dead_letters (
    sink        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    fidelity    INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    reason      TEXT    NOT NULL,
    failed_ms   INTEGER NOT NULL,
    -- Set by `dlq replay`: the sink delivers it again before new batches.
    requeued    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
