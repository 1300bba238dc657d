-- Billing: what each Stripe event did (an audit trail for support), and a status for async payments that failed.

ALTER TABLE stripe_events ADD COLUMN outcome text;

ALTER TABLE purchases DROP CONSTRAINT purchases_status_check;
ALTER TABLE purchases ADD CONSTRAINT purchases_status_check
  CHECK (status IN ('open', 'paid', 'refunded', 'partially_refunded', 'expired', 'payment_failed'));
