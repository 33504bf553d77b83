-- Tasks: runs started through the workflow/task API (a task's id is its run's), with what the caller
-- asked for. `status` is the task's status (core/tasks.task_status of its run), kept in the
-- transaction of every change of the run, so a listing filters on an index and a total is a counter
-- (task_counts, kept like the runs' by insert_tasks and the trigger below): neither scans tasks.
CREATE TABLE tasks (
    id text COLLATE "C" PRIMARY KEY,  -- the run's
    team text COLLATE "C" NOT NULL,
    workflow text COLLATE "C" NOT NULL,
    version integer NOT NULL,  -- the workflow's version the task runs
    status text COLLATE "C" NOT NULL,  -- pending | waiting | queued | running | completed | failed | cancelled
    events integer NOT NULL,  -- the seq of its last event in task_events
    body bytea NOT NULL,  -- the resolved parameters and the patched graph (runtime/tasks.TaskBody), JSON
    dispatch_target text NOT NULL,
    target_pool text NOT NULL,
    submitter_region text NOT NULL,
    tool_type text NOT NULL,
    created_via text NOT NULL,  -- jwt | api_key | device
    created double precision NOT NULL,
    started double precision,  -- when it first ran
    completed double precision  -- when it ended (completed, failed or cancelled)
);
CREATE INDEX tasks_team_id ON tasks (team, id);
CREATE INDEX tasks_team_status_id ON tasks (team, status, id);
CREATE TABLE task_counts (
    team text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (team, status)
);
-- A transaction that changes a task's status changed its run's first (its run counters): every
-- transaction takes counter rows in that order, and task_counts' rows by key.
CREATE FUNCTION tasks_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts AS c (team, status, n)
    SELECT team, status, sum(n) FROM (VALUES (OLD.team, OLD.status, -1), (NEW.team, NEW.status, 1))
        AS change (team, status, n)
    GROUP BY team, status ORDER BY team COLLATE "C", status COLLATE "C"
    ON CONFLICT (team, status) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_recounted AFTER UPDATE OF status ON tasks FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION tasks_recount();

-- A task's server-sent events, numbered from 1 per task (the SSE `id:`), each written in the
-- transaction of the change that caused it.
CREATE TABLE task_events (
    task text COLLATE "C" NOT NULL,
    seq integer NOT NULL,
    kind text NOT NULL,  -- status | progress | completed | failed | cancelled
    data bytea NOT NULL,  -- the event's one line of JSON
    at double precision NOT NULL,
    PRIMARY KEY (task, seq)
);

-- Idempotency-Key headers of task submissions: a retried POST gets the task its first try made.
CREATE TABLE idempotency_keys (
    team text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    task text COLLATE "C" NOT NULL,
    fingerprint text NOT NULL,  -- of the request it came with: the same key with another request is refused
    created double precision NOT NULL,
    PRIMARY KEY (team, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);
