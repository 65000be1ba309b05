-- `pdq api` (CONTRACT §10): uploaded files and the OpenAI batch each pdq job was created as.

CREATE TABLE files (
    id          uuid PRIMARY KEY,
    filename    text NOT NULL,
    purpose     text NOT NULL,
    bytes       bigint NOT NULL,
    lines       integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A file's bytes, in upload order. The key is deferred so that chunks can be written while the
-- upload streams in and the files row (whose purpose may come after the file) at its end, in
-- the same transaction.
CREATE TABLE file_chunks (
    file_id  uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    seq      integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);

-- One row per `POST /v1/batches`; its id is the job's. A batch refused at validation (a duplicate
-- `custom_id`) has `errors` and no job; one whose window passed has `expired_at`.
CREATE TABLE batches (
    id                 uuid PRIMARY KEY,
    input_file_id      uuid NOT NULL,
    endpoint           text NOT NULL,
    completion_window  text NOT NULL,
    metadata           jsonb,
    errors             jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    cancelling_at      timestamptz,
    expired_at         timestamptz,
    failed_at          timestamptz
);
