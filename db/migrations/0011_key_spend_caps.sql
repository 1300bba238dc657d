-- Spend caps per API key (SPEC section 2): optional credits per UTC day and per UTC month, and the tasks the key may
-- submit (NULL: every task). The hold records the key it was made through, so the caps (held + captured within the
-- period; released and expired holds give their credits back) and usage by key read the ledger's own rows.
ALTER TABLE api_keys
  ADD COLUMN daily_credit_cap bigint CHECK (daily_credit_cap >= 0),
  ADD COLUMN monthly_credit_cap bigint CHECK (monthly_credit_cap >= 0),
  ADD COLUMN allowed_tasks text[] CHECK (cardinality(allowed_tasks) > 0);

ALTER TABLE holds ADD COLUMN api_key_id uuid REFERENCES api_keys (id) ON DELETE SET NULL;
CREATE INDEX holds_api_key_idx ON holds (api_key_id, created_at) WHERE api_key_id IS NOT NULL;
