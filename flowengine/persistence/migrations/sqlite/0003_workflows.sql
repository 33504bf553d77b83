-- Workflows (a flow plus its public description) and their immutable versions.
CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,  -- '' for an operator's, declared in a flow file: every team's to see
    slug TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,  -- the current one
    status TEXT NOT NULL,  -- active | disabled
    created REAL NOT NULL,
    updated REAL NOT NULL,
    source TEXT NOT NULL  -- file:<flow file> | api
);
CREATE INDEX idx_workflows_team_slug ON workflows (team, slug);
CREATE TABLE workflow_versions (
    workflow TEXT NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,  -- the prepared workflow (core.workflows.WorkflowIn, with its flow), JSON
    created REAL NOT NULL,
    PRIMARY KEY (workflow, version)
) WITHOUT ROWID;
