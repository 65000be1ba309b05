-- pdq schema (CONTRACT §5). Column names are the SQL interface analysts query; add, never rename.

CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    name         text,
    namespace    text NOT NULL,
    input_file   text,
    status       text NOT NULL CHECK (status IN ('validating', 'in_progress', 'finalizing', 'completed',
                                                 'failed', 'cancelling', 'cancelled')),
    total        integer NOT NULL DEFAULT 0,
    completed    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    cancelled    integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);

-- One row per accepted input line (including lines that failed validation, so each has a result).
-- Requests published straight to AMQP have no job.
CREATE TABLE requests (
    id                     uuid PRIMARY KEY,
    job_id                 uuid REFERENCES jobs(id) ON DELETE CASCADE,
    line_no                integer,
    custom_id              text,
    url                    text,
    body                   jsonb,
    routed_dp_rank         integer,
    disagg_prefill_dp_rank integer,
    status                 text NOT NULL DEFAULT 'queued'
                           CHECK (status IN ('queued', 'completed', 'failed', 'cancelled')),
    attempts               integer NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_job_line ON requests (job_id, line_no);

-- Exactly one row per request: the primary key makes a redelivered message's second write a no-op.
CREATE TABLE results (
    request_id        uuid PRIMARY KEY REFERENCES requests(id) ON DELETE CASCADE,
    job_id            uuid REFERENCES jobs(id) ON DELETE CASCADE,
    custom_id         text,
    status            text NOT NULL CHECK (status IN ('completed', 'failed', 'cancelled')),
    text              text,
    output_ids        integer[],
    meta_info         jsonb,
    error             jsonb,
    dp_rank           integer,
    prefill_dp_rank   integer,
    prompt_tokens     integer,
    completion_tokens integer,
    finish_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX results_job ON results (job_id);

-- Live workers: producers read the cluster's DP sizes from here; operators see ranks, hosts and
-- data-plane endpoints (decoders take the endpoint from each KV handle).
CREATE TABLE workers (
    namespace    text NOT NULL,
    role         text NOT NULL CHECK (role IN ('prefill', 'decode', 'colocated')),
    dp_rank      integer NOT NULL,
    prefill_dp   integer NOT NULL,
    decode_dp    integer NOT NULL,
    mode         text NOT NULL,
    endpoint     text,
    host         text NOT NULL,
    pid          integer NOT NULL,
    model        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, role, dp_rank)
);
