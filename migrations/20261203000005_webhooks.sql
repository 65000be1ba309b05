-- Webhooks of `pdq api` (CONTRACT §15): a signed `batch.*` event when a batch ends, sent at
-- least once. Events are recorded here before they are sent, so a restart loses none.

-- One row per webhook URL a `pdq api` was started with. `since`: batches that ended from then
-- on get an event (a first start on an old database sends none for old batches). `scanned_to`:
-- when the last look for ended batches started; the next look goes back a margin before it, for
-- a batch whose ending transaction began earlier but committed later.
CREATE TABLE webhook_endpoints (
    url         text PRIMARY KEY,
    since       timestamptz NOT NULL DEFAULT now(),
    scanned_to  timestamptz NOT NULL DEFAULT now()
);

-- One event per batch end. `id` is the event's id and the `webhook-id` header (the same on every
-- attempt, so a receiver can drop a repeat); `job_id` is the batch's id, which is its job's (a
-- batch refused at validation has no job row). `payload` is the body, as sent.
-- `next_attempt_at`: when the next attempt is due (NULL once delivered or given up); while an
-- attempt runs it is pushed past the attempt's timeout, so another `pdq api` does not take it.
-- `last_error`: why the last failed attempt failed, kept after a later one succeeds.
CREATE TABLE webhook_events (
    id               text PRIMARY KEY,
    job_id           uuid NOT NULL UNIQUE,
    type             text NOT NULL CHECK (type IN ('batch.completed', 'batch.failed', 'batch.cancelled',
                                                   'batch.expired')),
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    delivered_at     timestamptz,
    last_error       text
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- What the look for ended batches reads: the jobs and refused batches that ended lately.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX batches_failed ON batches (failed_at) WHERE failed_at IS NOT NULL;
