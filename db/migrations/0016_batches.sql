-- Batches (issue 23 item 2): one task, many items, held all together in one transaction. Each item is a job row
-- pointing at its batch; the batch row carries what the items share and their count.

CREATE TABLE public.batches (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES public.accounts (user_id) ON DELETE CASCADE,
  task text NOT NULL,
  params jsonb NOT NULL DEFAULT '{}'::jsonb,
  item_count integer NOT NULL CHECK (item_count BETWEEN 1 AND 1000),
  cost bigint NOT NULL CHECK (cost >= 0),
  webhook_url text,
  -- Items not yet final. The settle that takes it to 0 (its UPDATE locks this row, so concurrent settles take
  -- turns) is the one that queues `batch.completed`: exactly once.
  remaining integer NOT NULL CHECK (remaining >= 0),
  completed_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_user_created ON public.batches (user_id, created_at DESC, id DESC);

ALTER TABLE public.jobs ADD COLUMN batch_id uuid REFERENCES public.batches (id);
ALTER TABLE public.jobs ADD COLUMN batch_index integer;
ALTER TABLE public.jobs ADD CONSTRAINT jobs_batch_index_with_batch CHECK ((batch_id IS NULL) = (batch_index IS NULL));
CREATE UNIQUE INDEX jobs_batch_item ON public.jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;

-- Same RLS as every table (0003): owners read their own rows, every write goes through the API.
ALTER TABLE public.batches ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.batches FROM anon, authenticated;
GRANT ALL ON public.batches TO service_role;
GRANT SELECT ON public.batches TO authenticated;
CREATE POLICY batches_owner_read ON public.batches FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
