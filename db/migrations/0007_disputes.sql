-- Stripe disputes (chargebacks): each dispute claws back its share of a purchase's credits once, and gives them
-- back if the dispute closes in our favour. Refunds and disputes of one purchase together never take back more
-- than it granted: purchases.credits_refunded + purchases.credits_disputed <= purchases.credits.

ALTER TABLE purchases ADD COLUMN credits_disputed bigint NOT NULL DEFAULT 0 CHECK (credits_disputed >= 0);

CREATE TABLE disputes (
  dispute_id text PRIMARY KEY,  -- Stripe's dp_...
  checkout_session_id text NOT NULL REFERENCES purchases (checkout_session_id) ON DELETE CASCADE,
  amount bigint NOT NULL CHECK (amount >= 0),  -- disputed amount, smallest currency unit
  credits_clawed_back bigint NOT NULL DEFAULT 0 CHECK (credits_clawed_back >= 0),
  status text NOT NULL,  -- 'open' until charge.dispute.closed, then Stripe's final status (won, lost, ...)
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.disputes ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.disputes FROM anon, authenticated;
GRANT ALL ON public.disputes TO service_role;
