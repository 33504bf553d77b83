-- Teams' webhooks, the deliveries a task's end makes (written in the transaction of the run change,
-- so a restart loses none), and every attempt at one.
CREATE TABLE webhooks (
    id text COLLATE "C" PRIMARY KEY,
    team text NOT NULL,
    display_name text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,  -- whsec_<base64>; the current one only (a rotation replaces it)
    events text NOT NULL,  -- space-separated event types
    status text NOT NULL,  -- active | disabled
    created double precision NOT NULL,
    updated double precision NOT NULL,
    last_delivered double precision
);
CREATE INDEX webhooks_team ON webhooks (team, id);
CREATE TABLE webhook_deliveries (
    id text COLLATE "C" PRIMARY KEY,  -- the webhook-id header: the same on every attempt
    webhook text NOT NULL,
    event text NOT NULL,
    task text NOT NULL,
    body bytea NOT NULL,  -- the exact bytes sent (and signed) on every attempt
    status text NOT NULL,  -- pending | delivered | failed
    tries integer NOT NULL,  -- attempts since it was made or re-sent (the retry schedule's position)
    attempts integer NOT NULL,  -- attempts ever
    due double precision,  -- when a pending delivery is next sent (a sender's claim moves it past its lease)
    created double precision NOT NULL,
    updated double precision NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE TABLE webhook_attempts (
    delivery text NOT NULL,
    n integer NOT NULL,
    at double precision NOT NULL,
    status_code integer,  -- none: no answer (refused, timed out, unreachable)
    latency double precision NOT NULL,  -- seconds
    error text NOT NULL,
    PRIMARY KEY (delivery, n)
);
