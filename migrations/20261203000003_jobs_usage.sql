-- Token totals per job (CONTRACT §15: the batch object's `usage`, `pdq status --json`), kept
-- with the job's counters in the statement that writes its result rows, so reading them costs
-- one row, not a scan of the job's results. Jobs written before this are summed once here.
ALTER TABLE jobs
    ADD COLUMN prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN cached_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens bigint NOT NULL DEFAULT 0;
UPDATE jobs j
   SET prompt_tokens = s.p, cached_tokens = s.c, completion_tokens = s.o
  FROM (SELECT job_id, COALESCE(sum(prompt_tokens), 0) AS p, COALESCE(sum(cached_tokens), 0) AS c,
               COALESCE(sum(completion_tokens), 0) AS o
          FROM results WHERE job_id IS NOT NULL GROUP BY job_id) s
 WHERE j.id = s.job_id;
