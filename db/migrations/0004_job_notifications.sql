-- Live job updates: every change of a job's status, progress or stage bumps jobs.event_seq and is announced on the
-- `job_events` channel, so the API's one LISTEN connection (api/events.py) can fan it out to SSE streams and
-- `Prefer: wait` without polling. event_seq is the SSE event id: a per-job counter, strictly increasing because
-- updates of one row are serialised by its row lock (timestamps from now() are not: they are transaction starts).

ALTER TABLE jobs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE FUNCTION jobs_bump_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status OR NEW.progress IS DISTINCT FROM OLD.progress
     OR NEW.stage IS DISTINCT FROM OLD.stage THEN
    NEW.event_seq := OLD.event_seq + 1;
  ELSE
    NEW.event_seq := OLD.event_seq;  -- heartbeats and other writes are not events; nor may a writer set it
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER jobs_event_seq BEFORE UPDATE ON jobs
  FOR EACH ROW EXECUTE FUNCTION jobs_bump_event_seq();

-- AFTER triggers see the committed-to-be row; NOTIFY itself is delivered only when the transaction commits.
-- The payload stays far below NOTIFY's 8000-byte limit: stage is clipped.
CREATE FUNCTION jobs_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.event_seq IS DISTINCT FROM OLD.event_seq THEN
    PERFORM pg_notify('job_events', json_build_object(
      'id', NEW.id, 'user_id', NEW.user_id, 'status', NEW.status, 'progress', NEW.progress,
      'stage', left(NEW.stage, 200), 'seq', NEW.event_seq)::text);
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_event AFTER INSERT OR UPDATE ON jobs
  FOR EACH ROW EXECUTE FUNCTION jobs_notify_event();

REVOKE EXECUTE ON FUNCTION jobs_bump_event_seq(), jobs_notify_event() FROM PUBLIC;
