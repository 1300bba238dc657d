-- An in-flight Idempotency-Key claim is renewed while its request runs (api.jobs.idempotency.kept_alive): its lease
-- runs from the last renewal, so a submit longer than the lease keeps its key, and only a claim whose request died
-- (an API crash) lapses.
ALTER TABLE idempotency_records ADD COLUMN renewed_at timestamptz NOT NULL DEFAULT now();
