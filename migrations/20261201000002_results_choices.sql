-- Request features (CONTRACT §12). `logprobs`: choice 0's per-token log-probabilities when the
-- request asked for them, `[{id, token, logprob, top: [{id, token, logprob}]}]`. `choices`: every
-- choice of a request with `n` > 1, `[{index, text, output_ids, finish_reason, logprobs?}]`;
-- `text` and `output_ids` keep choice 0 either way, and `completion_tokens` counts all choices.
ALTER TABLE results ADD COLUMN logprobs jsonb, ADD COLUMN choices jsonb;
