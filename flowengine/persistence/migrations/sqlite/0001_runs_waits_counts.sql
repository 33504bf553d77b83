-- Runs, the flow definitions they follow, the object keys they wait for, when their objects
-- expire, and how many runs there are by status and by flow and status.
--
-- This is also the schema from before migrations were numbered: user_version 0 (no counters) is
-- upgraded by it in place (hence IF NOT EXISTS, and the counters counted from the runs there are);
-- user_version 1 is this version already.
CREATE TABLE IF NOT EXISTS definitions (hash TEXT PRIMARY KEY, body BLOB);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL,
    wake_at REAL,
    definition TEXT,  -- hash of the definition the run follows
    doc BLOB NOT NULL  -- the run (machine.Run), JSON
);
-- Run IDs are UUIDv7, in creation order: listings sort by id, so `created` needs no index.
CREATE INDEX IF NOT EXISTS idx_runs_status_id ON runs (status, id);
CREATE INDEX IF NOT EXISTS idx_runs_flow_id ON runs (flow, id);
-- Both filters at once: a page without scanning past the other flows' (or statuses') runs.
CREATE INDEX IF NOT EXISTS idx_runs_flow_status_id ON runs (flow, status, id);
CREATE INDEX IF NOT EXISTS idx_runs_wake_at ON runs (wake_at);

CREATE TABLE IF NOT EXISTS waits (
    location TEXT,
    key TEXT,
    run_id TEXT,
    edge TEXT,
    next_check REAL,  -- when the reconciler asks about the key next; NULL: never (embedded uploads)
    checks INTEGER,
    PRIMARY KEY (location, key)
);
-- Indexes of earlier versions: the reconciler walks waits by key (runtime/landing.py).
DROP INDEX IF EXISTS idx_waits_next_check;
DROP INDEX IF EXISTS waits_due;

CREATE TABLE IF NOT EXISTS expiries (run_id TEXT, edge TEXT, expires_at REAL, PRIMARY KEY (run_id, edge));
CREATE INDEX IF NOT EXISTS idx_expiries_expires_at ON expiries (expires_at);

-- What one engine process leaves for the next, such as whether it stopped cleanly.
CREATE TABLE IF NOT EXISTS engine_state (name TEXT PRIMARY KEY, value) WITHOUT ROWID;

-- Runs by status, and by flow and status: kept in the transaction of every change (by insert_runs,
-- and by these triggers on a status change or a delete), so a total costs a few rows, not a count.
CREATE TABLE IF NOT EXISTS status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flow_counts (
    flow TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (flow, status)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS runs_counted_out AFTER DELETE ON runs BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = old.status;
    UPDATE flow_counts SET n = n - 1 WHERE flow = old.flow AND status = old.status;
END;
CREATE TRIGGER IF NOT EXISTS runs_recounted AFTER UPDATE OF status, flow ON runs
WHEN old.status IS NOT new.status OR old.flow IS NOT new.flow BEGIN
    UPDATE status_counts SET n = n - 1 WHERE status = old.status;
    UPDATE flow_counts SET n = n - 1 WHERE flow = old.flow AND status = old.status;
    INSERT INTO status_counts VALUES (new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO flow_counts VALUES (new.flow, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
-- Counted once, from the runs a database of version 0 holds.
DELETE FROM flow_counts;
DELETE FROM status_counts;
INSERT INTO flow_counts SELECT flow, status, count(*) FROM runs GROUP BY flow, status;
INSERT INTO status_counts SELECT status, sum(n) FROM flow_counts GROUP BY status;
