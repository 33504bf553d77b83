-- Teams, users and their memberships, and credentials (identity/); runs belong to a team ('' for
-- none: an open engine's runs), and the counters and listing indexes lead with the team, so a
-- team's page or total never looks at another's; files presigned for the workflow/task API.
CREATE TABLE teams (
    id text COLLATE "C" PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    created double precision NOT NULL
);
CREATE TABLE users (
    id text COLLATE "C" PRIMARY KEY,
    email text COLLATE "C" NOT NULL UNIQUE,
    created double precision NOT NULL
);
CREATE TABLE members (
    team text COLLATE "C" NOT NULL,
    "user" text COLLATE "C" NOT NULL,
    role text NOT NULL,
    created double precision NOT NULL,
    PRIMARY KEY (team, "user")
);
CREATE INDEX members_user ON members ("user");
CREATE TABLE credentials (
    id text COLLATE "C" PRIMARY KEY,
    kind text NOT NULL,  -- integration | device | agent
    team text COLLATE "C" NOT NULL,
    "user" text COLLATE "C",  -- a device key's user
    display_name text NOT NULL,
    key_prefix text NOT NULL,
    key_hash text COLLATE "C" NOT NULL UNIQUE,  -- SHA-256 of the key: the key itself is never stored
    created double precision NOT NULL,
    expires double precision,
    revoked double precision,
    last_used double precision,
    paired_with text COLLATE "C"  -- a device key's companion agent key
);
CREATE INDEX credentials_team ON credentials (team, kind, id);

ALTER TABLE runs ADD COLUMN team text COLLATE "C" NOT NULL DEFAULT '';
DROP TRIGGER runs_recounted ON runs;
DROP TRIGGER runs_counted_out ON runs;
DROP FUNCTION runs_recount();
DROP TABLE status_counts;
DROP TABLE flow_counts;
CREATE TABLE status_counts (
    team text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (team, status)
);
CREATE TABLE flow_counts (
    team text COLLATE "C" NOT NULL,
    flow text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (team, flow, status)
);
-- As before: counter rows are changed in one order, status_counts before flow_counts, each by key.
CREATE FUNCTION runs_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (team, status, n)
    SELECT team, status, sum(n) FROM (VALUES (OLD.team, OLD.status, -1), (NEW.team, NEW.status, 1))
        AS change (team, status, n)
    WHERE status IS NOT NULL GROUP BY team, status ORDER BY team COLLATE "C", status COLLATE "C"
    ON CONFLICT (team, status) DO UPDATE SET n = c.n + excluded.n;
    INSERT INTO flow_counts AS c (team, flow, status, n)
    SELECT team, flow, status, sum(n)
    FROM (VALUES (OLD.team, OLD.flow, OLD.status, -1), (NEW.team, NEW.flow, NEW.status, 1)) AS change (team, flow, status, n)
    WHERE status IS NOT NULL GROUP BY team, flow, status
    ORDER BY team COLLATE "C", flow COLLATE "C", status COLLATE "C"
    ON CONFLICT (team, flow, status) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_recounted AFTER UPDATE OF status ON runs FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION runs_recount();
CREATE TRIGGER runs_counted_out AFTER DELETE ON runs FOR EACH ROW EXECUTE FUNCTION runs_recount();
INSERT INTO flow_counts SELECT team, flow, status, count(*) FROM runs GROUP BY team, flow, status;
INSERT INTO status_counts SELECT team, status, sum(n) FROM flow_counts GROUP BY team, status;
DROP INDEX runs_status_id;
DROP INDEX runs_flow_id;
DROP INDEX runs_flow_status_id;
CREATE INDEX runs_team_id ON runs (team, id);
CREATE INDEX runs_team_status_id ON runs (team, status, id);
CREATE INDEX runs_team_flow_status_id ON runs (team, flow, status, id);
-- The engine's scans of runs by status (recovery after a restart) go across teams.
CREATE INDEX runs_status_id_all ON runs (status, id);

CREATE TABLE files (
    store text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,  -- the file_key clients pass as a file parameter
    team text COLLATE "C" NOT NULL,
    name text NOT NULL,
    size bigint NOT NULL,  -- declared, signed into the upload URL
    content_type text NOT NULL,
    created double precision NOT NULL,
    expires double precision NOT NULL,
    PRIMARY KEY (store, key)
);
CREATE INDEX files_expires ON files (expires);
