-- The durable step queue: every attempt of every step, leased by the local executor or by an agent.
CREATE TABLE attempts (
    id TEXT PRIMARY KEY,  -- UUIDv7: the lease id
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,  -- the machine's attempt number
    team TEXT NOT NULL,
    tool TEXT NOT NULL,  -- exec | python | a Tool task's tool
    labels TEXT NOT NULL,  -- JSON list: a worker must have every one
    pool TEXT NOT NULL,  -- team | community
    region TEXT NOT NULL,  -- preferred region; '' for none
    timeout REAL NOT NULL,  -- seconds the attempt may run, from its acknowledgement
    state TEXT NOT NULL,  -- queued | offered | running | done
    outcome TEXT NOT NULL,  -- done: succeeded | failed | cancelled | expired | lost | interrupted
    worker TEXT NOT NULL,  -- the agent's id, or local:<node>; '' while queued
    session TEXT NOT NULL,  -- the worker's session that holds it
    token TEXT NOT NULL,  -- the current lease token; '' while queued
    offered_at REAL,
    offer_expires REAL,
    acked_at REAL,
    lease_expires REAL,
    deadline REAL,  -- queued: schedule-to-start; running: the end of its timeout
    created REAL NOT NULL,
    log_seq INTEGER NOT NULL  -- the last log chunk accepted
);
CREATE INDEX idx_attempts_queued ON attempts (created, id) WHERE state = 'queued';
CREATE INDEX idx_attempts_worker ON attempts (worker, state) WHERE state IN ('offered', 'running');
CREATE INDEX idx_attempts_run ON attempts (run_id, step, attempt);
CREATE INDEX idx_attempts_offer_expires ON attempts (offer_expires) WHERE state = 'offered';
CREATE INDEX idx_attempts_lease_expires ON attempts (lease_expires) WHERE state = 'running';
CREATE INDEX idx_attempts_deadline ON attempts (deadline) WHERE state IN ('queued', 'running');
-- Agents: machines users bring, one row per (team, name); a new registration is a new session.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,  -- JSON list
    tools TEXT NOT NULL,  -- JSON list
    region TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    community INTEGER NOT NULL,
    system TEXT NOT NULL,  -- JSON object: gpu model, vram, os, versions
    session TEXT NOT NULL,
    last_heartbeat REAL NOT NULL,
    connected_at REAL NOT NULL,
    tasks_completed INTEGER NOT NULL,
    UNIQUE (team, name)
);
