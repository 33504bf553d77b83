-- Workflows (a flow plus its public description) and their immutable versions.
CREATE TABLE workflows (
    id text COLLATE "C" PRIMARY KEY,
    team text COLLATE "C" NOT NULL,  -- '' for an operator's, declared in a flow file: every team's to see
    slug text COLLATE "C" NOT NULL UNIQUE,
    version integer NOT NULL,  -- the current one
    status text NOT NULL,  -- active | disabled
    created double precision NOT NULL,
    updated double precision NOT NULL,
    source text NOT NULL  -- file:<flow file> | api
);
CREATE INDEX workflows_team_slug ON workflows (team, slug);
CREATE TABLE workflow_versions (
    workflow text COLLATE "C" NOT NULL REFERENCES workflows (id),
    version integer NOT NULL,
    body bytea NOT NULL,  -- the prepared workflow (core.workflows.WorkflowIn, with its flow), JSON
    created double precision NOT NULL,
    PRIMARY KEY (workflow, version)
);
