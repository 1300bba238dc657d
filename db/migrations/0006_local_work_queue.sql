-- Local worker processes claim queued jobs themselves (api/dispatchers/local.py). A job is handed to them by setting its
-- dispatch_id to 'local'; this trigger wakes them with a NOTIFY on `local_work`, delivered when that transaction
-- commits (so the job is visible to the claim). Workers also poll, so a missed notification only delays a claim.
CREATE FUNCTION jobs_notify_local_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'queued' AND NEW.dispatch_id = 'local'
     AND (TG_OP = 'INSERT' OR OLD.dispatch_id IS DISTINCT FROM NEW.dispatch_id) THEN
    PERFORM pg_notify('local_work', '');
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_local_work AFTER INSERT OR UPDATE OF dispatch_id ON jobs
  FOR EACH ROW EXECUTE FUNCTION jobs_notify_local_work();

REVOKE EXECUTE ON FUNCTION jobs_notify_local_work() FROM PUBLIC;
