-- Teams' webhooks, the deliveries a task's end makes (written in the transaction of the run change,
-- so a restart loses none), and every attempt at one.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    display_name TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,  -- whsec_<base64>; the current one only (a rotation replaces it)
    events TEXT NOT NULL,  -- space-separated event types
    status TEXT NOT NULL,  -- active | disabled
    created REAL NOT NULL,
    updated REAL NOT NULL,
    last_delivered REAL
);
CREATE INDEX idx_webhooks_team ON webhooks (team, id);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,  -- the webhook-id header: the same on every attempt
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    task TEXT NOT NULL,
    body BLOB NOT NULL,  -- the exact bytes sent (and signed) on every attempt
    status TEXT NOT NULL,  -- pending | delivered | failed
    tries INTEGER NOT NULL,  -- attempts since it was made or re-sent (the retry schedule's position)
    attempts INTEGER NOT NULL,  -- attempts ever
    due REAL,  -- when a pending delivery is next sent (a sender's claim moves it past its lease)
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (due) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE TABLE webhook_attempts (
    delivery TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,  -- none: no answer (refused, timed out, unreachable)
    latency REAL NOT NULL,  -- seconds
    error TEXT NOT NULL,
    PRIMARY KEY (delivery, n)
);
