-- Resumable uploads (tus 1.0): one row per upload, owned by a user. Local mode's API receives the bytes itself
-- (`upload_offset` is what it has written); in production the client sends them straight to Supabase Storage and the
-- row only records the authorization it was given. A job that takes the upload as its input consumes it (`used`,
-- `job_id`); the retention sweep expires the rest after `expires_at`.
CREATE TABLE uploads (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  backend text NOT NULL CHECK (backend IN ('local', 'supabase')),
  object_key text NOT NULL UNIQUE,  -- in the inputs bucket: <user>/uploads/<id>
  filename text NOT NULL,
  content_type text NOT NULL,
  size bigint NOT NULL CHECK (size > 0),
  upload_offset bigint NOT NULL DEFAULT 0 CHECK (upload_offset >= 0 AND upload_offset <= size),
  state text NOT NULL DEFAULT 'uploading' CHECK (state IN ('uploading', 'complete', 'used', 'expired')),
  job_id uuid REFERENCES jobs (id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  expires_at timestamptz NOT NULL
);
CREATE INDEX uploads_user ON uploads (user_id, created_at DESC);
CREATE INDEX uploads_expiring ON uploads (expires_at) WHERE state IN ('uploading', 'complete');

-- As every table (0003): the owner reads its rows, writes go through the API as the table owner.
ALTER TABLE uploads ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON uploads FROM anon, authenticated;
GRANT ALL ON uploads TO service_role;
GRANT SELECT ON uploads TO authenticated;
CREATE POLICY uploads_owner_read ON uploads FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
