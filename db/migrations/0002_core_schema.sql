-- Accounts, the append-only credit ledger, holds, jobs, billing, API keys, idempotency, webhooks, rate limits.
-- Credits are whole numbers (bigint). Money rules: ../SPEC.md section 2; how they are enforced: db/ledger.py.

CREATE TABLE accounts (
  user_id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
  available bigint NOT NULL DEFAULT 0,  -- may go negative after a refund clawback; that only blocks new jobs
  held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE ledger_kind AS ENUM ('grant', 'purchase', 'hold', 'capture', 'release', 'refund', 'adjustment');

-- Each entry moves credits between the account's available and held columns; the account row always equals
-- the sum of its entries (db.ledger.invariant_violations checks it).
CREATE TABLE ledger_entries (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  kind ledger_kind NOT NULL,
  idempotency_key text NOT NULL UNIQUE,
  available_delta bigint NOT NULL,
  held_delta bigint NOT NULL,
  job_id uuid,
  reference text,  -- Stripe checkout session or refund id, or an operator's note
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_user_idx ON ledger_entries (user_id, id DESC);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger_entries is append-only';
END
$$;
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE OR DELETE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

CREATE TYPE job_status AS ENUM ('queued', 'running', 'succeeded', 'failed', 'canceled');

CREATE TABLE jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  task text NOT NULL,
  params jsonb NOT NULL,
  model_key text NOT NULL,  -- models.lock key of the weights the job needs
  status job_status NOT NULL DEFAULT 'queued',
  cost bigint NOT NULL CHECK (cost >= 0),
  input_ref text,  -- storage key of the input; null for text tasks and after the input is deleted
  input_meta jsonb NOT NULL DEFAULT '{}',  -- duration_s, channels, sample_rate, codec, bytes, filename
  outputs jsonb NOT NULL DEFAULT '[]',  -- [{name, ref, content_type, bytes, metadata}]
  dispatch_id text,  -- Modal FunctionCall id, or the local pool's id
  progress real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
  stage text,
  heartbeat_at timestamptz,
  attempts integer NOT NULL DEFAULT 0,
  error jsonb,  -- {code, message}: safe for the user to read
  cancel_requested boolean NOT NULL DEFAULT false,
  metrics jsonb NOT NULL DEFAULT '{}',  -- audio_seconds, compute_seconds, ...
  webhook_url text,
  webhook_events text[],
  deadline_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  outputs_expire_at timestamptz,
  outputs_deleted_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_user_created_idx ON jobs (user_id, created_at DESC, id DESC);
CREATE INDEX jobs_active_idx ON jobs (status, created_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_outputs_expire_idx ON jobs (outputs_expire_at) WHERE outputs_deleted_at IS NULL;

-- Final states never change (SPEC section 3), whatever code path tries.
CREATE FUNCTION jobs_final_states_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IN ('succeeded', 'failed', 'canceled') AND NEW.status IS DISTINCT FROM OLD.status THEN
    RAISE EXCEPTION 'job % is already %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
  END IF;
  NEW.updated_at := now();
  RETURN NEW;
END
$$;
CREATE TRIGGER jobs_status_guard BEFORE UPDATE ON jobs
  FOR EACH ROW EXECUTE FUNCTION jobs_final_states_are_final();

CREATE TYPE hold_state AS ENUM ('pending', 'captured', 'released', 'expired');

-- One hold per job. Capture and release are guarded transitions out of 'pending', so they apply once.
CREATE TABLE holds (
  job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  amount bigint NOT NULL CHECK (amount >= 0),
  state hold_state NOT NULL DEFAULT 'pending',
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  settled_at timestamptz
);
CREATE INDEX holds_pending_expiry_idx ON holds (expires_at) WHERE state = 'pending';

CREATE TABLE stripe_events (
  event_id text PRIMARY KEY,
  type text NOT NULL,
  object_id text,
  received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE purchases (
  checkout_session_id text PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  pack text NOT NULL,
  credits bigint NOT NULL CHECK (credits > 0),
  amount_total bigint NOT NULL CHECK (amount_total >= 0),  -- smallest currency unit
  currency text NOT NULL,
  payment_intent text,
  status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'refunded', 'partially_refunded', 'expired')),
  amount_refunded bigint NOT NULL DEFAULT 0,  -- cumulative, as Stripe reports it
  credits_refunded bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX purchases_payment_intent_idx ON purchases (payment_intent);

CREATE TABLE api_keys (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  name text NOT NULL,
  prefix text NOT NULL,  -- the first characters, shown in listings so users can tell keys apart
  key_hash bytea NOT NULL UNIQUE,  -- SHA-256 of the whole key; the key itself is shown once and never stored
  created_at timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);

CREATE TABLE idempotency_records (
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  key text NOT NULL,
  request_hash text NOT NULL,
  state text NOT NULL DEFAULT 'in_flight' CHECK (state IN ('in_flight', 'done')),
  response_status integer,
  response_body jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_records_expiry_idx ON idempotency_records (expires_at);

CREATE TABLE webhook_secrets (
  user_id uuid PRIMARY KEY REFERENCES accounts (user_id) ON DELETE CASCADE,
  secret text NOT NULL,  -- whsec_<base64>; kept readable because every delivery is signed with it
  created_at timestamptz NOT NULL DEFAULT now(),
  rotated_at timestamptz
);

CREATE TABLE webhook_deliveries (
  id text PRIMARY KEY,  -- the webhook-id header: stable across retries so receivers can dedupe
  job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
  event text NOT NULL,
  url text NOT NULL,
  payload jsonb NOT NULL,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_status_code integer,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_attempt_at timestamptz,
  delivered_at timestamptz
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, created_at DESC);

-- Fixed-window request counters, shared by every API process.
CREATE TABLE rate_limit_windows (
  user_id uuid NOT NULL,
  window_start timestamptz NOT NULL,
  requests integer NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, window_start)
);
