-- The KV cache (CONTRACT §14): prompt tokens whose KV the rank found in its prefix cache and did
-- not compute again, as `meta_info.cached_tokens` says. NULL on rows written before this column.
ALTER TABLE results ADD COLUMN cached_tokens integer;
