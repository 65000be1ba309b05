-- Jobs outlive their submitter (CONTRACT §13): the requests table is the outbox a feeder
-- publishes from, jobs carry a priority and an expiry, and `expired` is a job status.

ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('validating', 'in_progress', 'finalizing', 'completed', 'failed', 'cancelling',
                      'cancelled', 'expired'));

-- `priority`: a larger share of the ranks (weight 2^priority against the other active jobs).
-- `max_in_flight`: at most this many of the job's requests in the pipeline at once (NULL: no cap).
-- `dispatch`: the policy for stages a request leaves unpinned (shared, round-robin, least-loaded).
-- `expires_at`: created_at + completion_window; unfinished requests then end `batch_expired`.
ALTER TABLE jobs
    ADD COLUMN priority      integer NOT NULL DEFAULT 0,
    ADD COLUMN max_in_flight integer CHECK (max_in_flight IS NULL OR max_in_flight >= 1),
    ADD COLUMN dispatch      text NOT NULL DEFAULT 'shared',
    ADD COLUMN expires_at    timestamptz;
CREATE INDEX jobs_active ON jobs (namespace) WHERE status IN ('in_progress', 'cancelling');
-- A batch's window was the batch's own; jobs submitted before this had none (they keep none).
UPDATE jobs j SET expires_at = b.expires_at FROM batches b WHERE b.id = j.id;

-- `line`: the input line as submitted, what the feeder publishes (the message body of §4).
-- `prefill_pin`, `decode_pin`: the stage pins validation resolved (§3); NULL when unpinned.
-- `prefix_key`: a hash of the prompt's first 256 bytes, computed at acceptance, that
-- `--policy prefix` maps to a rank.
-- `published_at`: when the broker confirmed the request's message. Rows published before this
-- migration (by the old in-process publisher) and rows that arrived over AMQP count as published.
ALTER TABLE requests
    ADD COLUMN line         text,
    ADD COLUMN prefill_pin  integer,
    ADD COLUMN decode_pin   integer,
    ADD COLUMN prefix_key   bigint,
    ADD COLUMN published_at timestamptz;
UPDATE requests SET published_at = created_at;

-- What the feeder reads: a job's unpublished requests per prefill queue, in line order, and
-- the published ones still in the pipeline. Both stay as small as the work not yet done.
CREATE INDEX requests_unpublished ON requests (job_id, (COALESCE(prefill_pin, -1)), line_no)
    WHERE status = 'queued' AND published_at IS NULL;
CREATE INDEX requests_in_flight ON requests (job_id)
    WHERE status = 'queued' AND published_at IS NOT NULL;
-- `custom_id` is unique within a job (§2); the index also serves analysts' look-ups.
CREATE UNIQUE INDEX requests_job_custom_id ON requests (job_id, custom_id);

-- One feeder per namespace holds the lease at a time and renews it; a lease not renewed within
-- its TTL is taken over by another process's feeder.
CREATE TABLE feeders (
    namespace    text PRIMARY KEY,
    holder       uuid NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
