-- Teams, users and their memberships, and credentials (identity/); runs belong to a team ('' for
-- none: an open engine's runs), and the counters and listing indexes lead with the team, so a
-- team's page or total never looks at another's; files presigned for the workflow/task API.
CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE members (
    team TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (team, user)
) WITHOUT ROWID;
CREATE INDEX idx_members_user ON members (user);
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,  -- integration | device | agent
    team TEXT NOT NULL,
    user TEXT,  -- a device key's user
    display_name TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,  -- SHA-256 of the key: the key itself is never stored
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL,
    paired_with TEXT  -- a device key's companion agent key
);
CREATE INDEX idx_credentials_team ON credentials (team, kind, id);

ALTER TABLE runs ADD COLUMN team TEXT NOT NULL DEFAULT '';
DROP TRIGGER runs_counted_out;
DROP TRIGGER runs_recounted;
DROP TABLE status_counts;
DROP TABLE flow_counts;
CREATE TABLE status_counts (
    team TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (team, status)
) WITHOUT ROWID;
CREATE TABLE flow_counts (
    team TEXT NOT NULL, flow TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (team, flow, status)
) WITHOUT ROWID;
CREATE TRIGGER runs_counted_out AFTER DELETE ON runs BEGIN
    UPDATE status_counts SET n = n - 1 WHERE team = old.team AND status = old.status;
    UPDATE flow_counts SET n = n - 1 WHERE team = old.team AND flow = old.flow AND status = old.status;
END;
CREATE TRIGGER runs_recounted AFTER UPDATE OF status ON runs WHEN old.status IS NOT new.status BEGIN
    UPDATE status_counts SET n = n - 1 WHERE team = old.team AND status = old.status;
    UPDATE flow_counts SET n = n - 1 WHERE team = old.team AND flow = old.flow AND status = old.status;
    INSERT INTO status_counts VALUES (new.team, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO flow_counts VALUES (new.team, new.flow, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
INSERT INTO flow_counts SELECT team, flow, status, count(*) FROM runs GROUP BY team, flow, status;
INSERT INTO status_counts SELECT team, status, sum(n) FROM flow_counts GROUP BY team, status;
DROP INDEX idx_runs_status_id;
DROP INDEX idx_runs_flow_id;
DROP INDEX idx_runs_flow_status_id;
CREATE INDEX idx_runs_team_id ON runs (team, id);
CREATE INDEX idx_runs_team_status_id ON runs (team, status, id);
CREATE INDEX idx_runs_team_flow_status_id ON runs (team, flow, status, id);
-- The engine's scans of runs by status (recovery after a restart) go across teams.
CREATE INDEX idx_runs_status_id_all ON runs (status, id);

CREATE TABLE files (
    store TEXT NOT NULL,
    key TEXT NOT NULL,  -- the file_key clients pass as a file parameter
    team TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,  -- declared, signed into the upload URL
    content_type TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (store, key)
);
CREATE INDEX idx_files_expires ON files (expires);
