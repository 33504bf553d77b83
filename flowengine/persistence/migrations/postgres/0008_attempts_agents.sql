-- The durable step queue: every attempt of every step, leased by the local executor or by an agent.
CREATE TABLE attempts (
    id text COLLATE "C" PRIMARY KEY,  -- UUIDv7: the lease id
    run_id text COLLATE "C" NOT NULL,
    step text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,  -- the machine's attempt number
    team text COLLATE "C" NOT NULL,
    tool text COLLATE "C" NOT NULL,  -- exec | python | a Tool task's tool
    labels text COLLATE "C" NOT NULL,  -- JSON list: a worker must have every one
    pool text COLLATE "C" NOT NULL,  -- team | community
    region text COLLATE "C" NOT NULL,  -- preferred region; '' for none
    timeout double precision NOT NULL,  -- seconds the attempt may run, from its acknowledgement
    state text COLLATE "C" NOT NULL,  -- queued | offered | running | done
    outcome text COLLATE "C" NOT NULL,  -- done: succeeded | failed | cancelled | expired | lost | interrupted
    worker text COLLATE "C" NOT NULL,  -- the agent's id, or local:<node>; '' while queued
    session text COLLATE "C" NOT NULL,  -- the worker's session that holds it
    token text COLLATE "C" NOT NULL,  -- the current lease token; '' while queued
    offered_at double precision,
    offer_expires double precision,
    acked_at double precision,
    lease_expires double precision,
    deadline double precision,  -- queued: schedule-to-start; running: the end of its timeout
    created double precision NOT NULL,
    log_seq integer NOT NULL  -- the last log chunk accepted
);
CREATE INDEX attempts_queued ON attempts (created, id) WHERE state = 'queued';
CREATE INDEX attempts_worker ON attempts (worker, state) WHERE state IN ('offered', 'running');
CREATE INDEX attempts_run ON attempts (run_id, step, attempt);
CREATE INDEX attempts_offer_expires ON attempts (offer_expires) WHERE state = 'offered';
CREATE INDEX attempts_lease_expires ON attempts (lease_expires) WHERE state = 'running';
CREATE INDEX attempts_deadline ON attempts (deadline) WHERE state IN ('queued', 'running');
-- Agents: machines users bring, one row per (team, name); a new registration is a new session.
CREATE TABLE agents (
    id text COLLATE "C" PRIMARY KEY,
    team text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    labels text COLLATE "C" NOT NULL,  -- JSON list
    tools text COLLATE "C" NOT NULL,  -- JSON list
    region text COLLATE "C" NOT NULL,
    capacity integer NOT NULL,
    community boolean NOT NULL,
    system text COLLATE "C" NOT NULL,  -- JSON object: gpu model, vram, os, versions
    session text COLLATE "C" NOT NULL,
    last_heartbeat double precision NOT NULL,
    connected_at double precision NOT NULL,
    tasks_completed bigint NOT NULL,
    UNIQUE (team, name)
);
