-- RLS on every table. A signed-in user (role authenticated, auth.uid() = their id) reads only their own rows
-- and writes nothing: every write goes through the API, which connects as the table owner. anon gets nothing.
-- Supabase grants anon/authenticated full table privileges by default, so revoke explicitly.

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['accounts', 'ledger_entries', 'jobs', 'holds', 'stripe_events', 'purchases', 'api_keys',
                           'idempotency_records', 'webhook_secrets', 'webhook_deliveries', 'rate_limit_windows']
  LOOP
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('REVOKE ALL ON public.%I FROM anon, authenticated', t);
    EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
  END LOOP;
  FOREACH t IN ARRAY ARRAY['accounts', 'ledger_entries', 'jobs', 'holds', 'purchases', 'api_keys', 'webhook_deliveries']
  LOOP
    EXECUTE format('GRANT SELECT ON public.%I TO authenticated', t);
    EXECUTE format('CREATE POLICY %I ON public.%I FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()))',
                   t || '_owner_read', t);
  END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
REVOKE EXECUTE ON FUNCTION ledger_entries_append_only(), jobs_final_states_are_final() FROM PUBLIC;
