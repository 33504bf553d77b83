-- Tasks: runs started through the workflow/task API (a task's id is its run's), with what the caller
-- asked for. `status` is the task's status (core/tasks.task_status of its run), kept in the
-- transaction of every change of the run, so a listing filters on an index and a total is a counter
-- (task_counts, kept like the runs' by insert_tasks and the trigger below): neither scans tasks.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,  -- the run's
    team TEXT NOT NULL,
    workflow TEXT NOT NULL,
    version INTEGER NOT NULL,  -- the workflow's version the task runs
    status TEXT NOT NULL,  -- pending | waiting | queued | running | completed | failed | cancelled
    events INTEGER NOT NULL,  -- the seq of its last event in task_events
    body BLOB NOT NULL,  -- the resolved parameters and the patched graph (runtime/tasks.TaskBody), JSON
    dispatch_target TEXT NOT NULL,
    target_pool TEXT NOT NULL,
    submitter_region TEXT NOT NULL,
    tool_type TEXT NOT NULL,
    created_via TEXT NOT NULL,  -- jwt | api_key | device
    created REAL NOT NULL,
    started REAL,  -- when it first ran
    completed REAL  -- when it ended (completed, failed or cancelled)
);
CREATE INDEX idx_tasks_team_id ON tasks (team, id);
CREATE INDEX idx_tasks_team_status_id ON tasks (team, status, id);
CREATE TABLE task_counts (
    team TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (team, status)
) WITHOUT ROWID;
CREATE TRIGGER tasks_recounted AFTER UPDATE OF status ON tasks WHEN old.status IS NOT new.status BEGIN
    UPDATE task_counts SET n = n - 1 WHERE team = old.team AND status = old.status;
    INSERT INTO task_counts VALUES (new.team, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;

-- A task's server-sent events, numbered from 1 per task (the SSE `id:`), each written in the
-- transaction of the change that caused it.
CREATE TABLE task_events (
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,  -- status | progress | completed | failed | cancelled
    data BLOB NOT NULL,  -- the event's one line of JSON
    at REAL NOT NULL,
    PRIMARY KEY (task, seq)
) WITHOUT ROWID;

-- Idempotency-Key headers of task submissions: a retried POST gets the task its first try made.
CREATE TABLE idempotency_keys (
    team TEXT NOT NULL,
    key TEXT NOT NULL,
    task TEXT NOT NULL,
    fingerprint TEXT NOT NULL,  -- of the request it came with: the same key with another request is refused
    created REAL NOT NULL,
    PRIMARY KEY (team, key)
) WITHOUT ROWID;
CREATE INDEX idx_idempotency_keys_created ON idempotency_keys (created);
