-- The fixed ranges of a sink's batches in flight, recorded before each
-- one's first attempt; a sink may have several in flight at once
-- (`batch.in_flight`). After a stop each is sent again with the same range
-- (so the same object key or idempotency key), oldest first. A row goes
-- when the sink's cursor passes its last seq; a split replaces it by its
-- two halves.
CREATE TABLE sink_batches (
    sink      TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (sink, first_seq)
) WITHOUT ROWID;

-- The one range sink_cursors could hold moves here; its columns stay, unused.
INSERT INTO sink_batches (sink, first_seq, last_seq)
    SELECT sink, batch_first, batch_last FROM sink_cursors
    WHERE batch_first IS NOT NULL AND batch_last IS NOT NULL AND batch_last > delivered_seq;
UPDATE sink_cursors SET batch_first = NULL, batch_last = NULL;
