-- Embeddings (CONTRACT §15): one row per input of a completed /v1/embeddings request, its
-- vector L2-normalized, as real[] so SQL can read it (`embedding[1:8]`, array_length, a dot
-- product with unnest). Written in the transaction that writes the request's results row, so
-- a row and its vectors are there together or not at all; deleted with that row.
CREATE TABLE embeddings (
    request_id  uuid NOT NULL REFERENCES results (request_id) ON DELETE CASCADE,
    input_index integer NOT NULL CHECK (input_index >= 0),
    embedding   real[] NOT NULL,
    PRIMARY KEY (request_id, input_index)
);
