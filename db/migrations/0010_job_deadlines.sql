-- A job's own deadline (`deadline_s` / `Cancel-After` on submit): not finished by `cancel_after`, the reaper ends it
-- `canceled` with error code `deadline` and releases its hold. Distinct from `deadline_at`, the deployment's limit
-- on one attempt, which a claim renews and which ends a job `failed`.
ALTER TABLE jobs ADD COLUMN cancel_after timestamptz;
CREATE INDEX jobs_cancel_after_idx ON jobs (cancel_after) WHERE cancel_after IS NOT NULL AND status IN ('queued', 'running');
