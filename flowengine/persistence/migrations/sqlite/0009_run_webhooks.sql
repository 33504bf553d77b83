-- A flow-API run's webhook delivery goes to the run's own URL (its webhook is ''): the run document,
-- rendered at each attempt and signed with the operator's key. NULL: a team webhook's delivery.
ALTER TABLE webhook_deliveries ADD COLUMN url TEXT;
