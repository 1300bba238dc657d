-- Partial results while a job runs (issue 23 item 5): each transcript segment or finished output file a worker
-- announces is a row here, numbered by the job's own event_seq (migration 0004), so an SSE stream resumed with
-- Last-Event-ID replays exactly the outputs after that id, and status/progress events keep the same id sequence.
-- Rows are for the attempt that wrote them: a re-claimed job (a retry) starts its partial outputs again.

ALTER TABLE jobs ADD COLUMN partial_outputs integer NOT NULL DEFAULT 0;

CREATE TABLE job_outputs (
  job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  seq bigint NOT NULL,  -- the job's event_seq that announced it: the SSE event id
  attempt integer NOT NULL,
  kind text NOT NULL CHECK (kind IN ('segment', 'file')),
  data jsonb NOT NULL,  -- segment: {index, start, end, text}; file: {name, ref, content_type, bytes, metadata}
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, seq)
);

ALTER TABLE job_outputs ENABLE ROW LEVEL SECURITY;  -- like every table: only the service role reads it

-- A new partial output is an event too: it bumps event_seq, which announces it on `job_events`.
CREATE OR REPLACE FUNCTION jobs_bump_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status OR NEW.progress IS DISTINCT FROM OLD.progress
     OR NEW.stage IS DISTINCT FROM OLD.stage OR NEW.partial_outputs IS DISTINCT FROM OLD.partial_outputs THEN
    NEW.event_seq := OLD.event_seq + 1;
  ELSE
    NEW.event_seq := OLD.event_seq;  -- heartbeats and other writes are not events; nor may a writer set it
  END IF;
  RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION jobs_bump_event_seq() FROM PUBLIC;
