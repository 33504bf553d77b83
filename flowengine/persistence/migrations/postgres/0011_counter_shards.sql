-- Counter rows per connection: every creation added to the one row (team, WAITING) and held its lock
-- until COMMIT, so that replicas creating runs waited on one another, not on the database. Each
-- connection now changes rows of its own (shard: its backend's pid, the column's default); a count
-- is the sum over the shards, and shard 0 (no backend has pid 0) holds what is folded back from
-- the shards of connections that have ended (PostgresDatabase.fold_counts), so that the rows do not
-- grow with every connection a replica ever opened. The trigger and insert_runs are unchanged but
-- for the conflict target: within a transaction, rows are still changed in one order, and two
-- transactions on different connections no longer share a row.
ALTER TABLE status_counts ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE status_counts ALTER COLUMN shard SET DEFAULT pg_backend_pid();
ALTER TABLE status_counts DROP CONSTRAINT status_counts_pkey;
ALTER TABLE status_counts ADD PRIMARY KEY (team, status, shard);
ALTER TABLE flow_counts ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE flow_counts ALTER COLUMN shard SET DEFAULT pg_backend_pid();
ALTER TABLE flow_counts DROP CONSTRAINT flow_counts_pkey;
ALTER TABLE flow_counts ADD PRIMARY KEY (team, flow, status, shard);

CREATE OR REPLACE FUNCTION runs_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (team, status, n)
    SELECT team, status, sum(n) FROM (VALUES (OLD.team, OLD.status, -1), (NEW.team, NEW.status, 1))
        AS change (team, status, n)
    WHERE status IS NOT NULL GROUP BY team, status ORDER BY team COLLATE "C", status COLLATE "C"
    ON CONFLICT (team, status, shard) DO UPDATE SET n = c.n + excluded.n;
    INSERT INTO flow_counts AS c (team, flow, status, n)
    SELECT team, flow, status, sum(n)
    FROM (VALUES (OLD.team, OLD.flow, OLD.status, -1), (NEW.team, NEW.flow, NEW.status, 1)) AS change (team, flow, status, n)
    WHERE status IS NOT NULL GROUP BY team, flow, status
    ORDER BY team COLLATE "C", flow COLLATE "C", status COLLATE "C"
    ON CONFLICT (team, flow, status, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;
