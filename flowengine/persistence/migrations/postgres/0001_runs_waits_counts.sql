-- Runs, the flow definitions they follow, the object keys they wait for, when their objects
-- expire, and how many runs there are by status and by flow and status.
--
-- Keys and IDs compare byte by byte (COLLATE "C", as SQLite does): the reconciler walks keys in the
-- order S3 lists them, and listings page by ID; a language's collation would order them otherwise.
CREATE TABLE definitions (
    hash text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);

CREATE TABLE runs (
    id text COLLATE "C" PRIMARY KEY,
    flow text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    created double precision NOT NULL,
    updated double precision,
    wake_at double precision,
    definition text COLLATE "C",  -- hash of the definition the run follows
    doc bytea NOT NULL  -- the run (machine.Run), JSON
);
-- Run IDs are UUIDv7, in creation order: listings sort by id, so `created` needs no index.
CREATE INDEX runs_status_id ON runs (status, id);
CREATE INDEX runs_flow_id ON runs (flow, id);
-- Both filters at once: a page without scanning past the other flows' (or statuses') runs.
CREATE INDEX runs_flow_status_id ON runs (flow, status, id);
-- Most runs have no timer (they are over): only those that have one are indexed.
CREATE INDEX runs_wake_at ON runs (wake_at) WHERE wake_at IS NOT NULL;

CREATE TABLE waits (
    location text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    edge text COLLATE "C" NOT NULL,
    next_check double precision,  -- when the reconciler asks about the key next; NULL: never (embedded uploads)
    checks integer NOT NULL DEFAULT 0,
    PRIMARY KEY (location, key)
);

CREATE TABLE expiries (
    run_id text COLLATE "C" NOT NULL,
    edge text COLLATE "C" NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (run_id, edge)
);
CREATE INDEX expiries_expires_at ON expiries (expires_at);

-- What one engine process leaves for the next, such as whether it stopped cleanly.
CREATE TABLE engine_state (
    name text COLLATE "C" PRIMARY KEY,
    value text
);

-- Runs by status, and by flow and status: kept in the transaction of every change (by insert_runs,
-- and by the trigger below on a status change or a delete), so a total costs a few rows, not a count.
CREATE TABLE status_counts (
    status text COLLATE "C" PRIMARY KEY,
    n bigint NOT NULL
);
CREATE TABLE flow_counts (
    flow text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (flow, status)
);

-- A counter row stays locked until its transaction ends. Every change takes them in one order,
-- status_counts before flow_counts, each by key (insert_runs too), so that two transactions
-- never wait for each other in a circle.
CREATE FUNCTION runs_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (status, n)
    SELECT status, sum(n) FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS change (status, n)
    WHERE status IS NOT NULL GROUP BY status ORDER BY status COLLATE "C"
    ON CONFLICT (status) DO UPDATE SET n = c.n + excluded.n;
    INSERT INTO flow_counts AS c (flow, status, n)
    SELECT flow, status, sum(n) FROM (VALUES (OLD.flow, OLD.status, -1), (NEW.flow, NEW.status, 1))
        AS change (flow, status, n)
    WHERE status IS NOT NULL GROUP BY flow, status ORDER BY flow COLLATE "C", status COLLATE "C"
    ON CONFLICT (flow, status) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_recounted AFTER UPDATE OF status, flow ON runs FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.flow IS DISTINCT FROM NEW.flow)
EXECUTE FUNCTION runs_recount();
CREATE TRIGGER runs_counted_out AFTER DELETE ON runs FOR EACH ROW EXECUTE FUNCTION runs_recount();
