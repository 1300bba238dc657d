-- A job's second inputs (e.g. master's `reference`): input name -> storage key in the inputs bucket. They are stored
-- and deleted together with `input_ref`: clearing `input_ref` clears this too, so the retention sweep that looks
-- for a non-null `input_ref` finds them as well.
ALTER TABLE jobs ADD COLUMN extra_inputs jsonb NOT NULL DEFAULT '{}'::jsonb;
