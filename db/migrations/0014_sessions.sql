-- Sessions (SPEC: the studio's multi-track timeline): a user's named sessions, each holding tracks that point at
-- a job output (job id + output name). A track never owns the file: deleting a session or a track deletes rows
-- only, never job outputs, and an output past retention reads as `expired` in the track view (db/sessions.py).
-- Positions are whole milliseconds; gain in dB, pan in -1..1 (the Web Audio StereoPannerNode's range).
CREATE TABLE sessions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_idx ON sessions (user_id, updated_at DESC, id);

CREATE TABLE session_tracks (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  -- No foreign key to jobs: a job row may go (account deletion cascades both anyway) and the track then reads as
  -- expired rather than vanishing from the user's arrangement.
  job_id uuid NOT NULL,
  output_name text NOT NULL CHECK (char_length(output_name) BETWEEN 1 AND 255),
  parent_track_id uuid REFERENCES session_tracks (id) ON DELETE SET NULL,  -- the track it was sent to a task from
  position integer NOT NULL,  -- display order within the session
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
  duration_ms integer NOT NULL CHECK (duration_ms > 0),  -- probed from the output when the track was added
  offset_ms integer NOT NULL DEFAULT 0 CHECK (offset_ms BETWEEN 0 AND 86400000),
  gain_db real NOT NULL DEFAULT 0 CHECK (gain_db BETWEEN -60 AND 12),
  pan real NOT NULL DEFAULT 0 CHECK (pan BETWEEN -1 AND 1),
  mute boolean NOT NULL DEFAULT false,
  solo boolean NOT NULL DEFAULT false,
  trim_in_ms integer NOT NULL DEFAULT 0 CHECK (trim_in_ms >= 0),
  trim_out_ms integer CHECK (trim_out_ms IS NULL OR trim_out_ms > trim_in_ms),  -- NULL: the output's end
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_tracks_session_idx ON session_tracks (session_id, position);

-- RLS as on every user table (0003): the owner may read their rows; every write goes through the API.
ALTER TABLE public.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.session_tracks ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.sessions, public.session_tracks FROM anon, authenticated;
GRANT ALL ON public.sessions, public.session_tracks TO service_role;
GRANT SELECT ON public.sessions, public.session_tracks TO authenticated;
CREATE POLICY sessions_owner_read ON public.sessions FOR SELECT TO authenticated
  USING (user_id = (SELECT auth.uid()));
CREATE POLICY session_tracks_owner_read ON public.session_tracks FOR SELECT TO authenticated
  USING (user_id = (SELECT auth.uid()));
