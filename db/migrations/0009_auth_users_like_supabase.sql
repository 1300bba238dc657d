-- The stand-in auth.users of 0001 (exactly id, email, created_at) gets the shape of Supabase's where our code
-- depends on it: email unique only among non-SSO users, through a partial unique index, so `ON CONFLICT (email)`
-- fails there as it now does here. Source: supabase/auth migrations/20221215195500_modify_users_email_unique_index.up.sql
-- (adds is_sso_user boolean NOT NULL DEFAULT false, drops users_email_key, creates users_email_partial_key ... WHERE
-- is_sso_user = false). Supabase's own table, and any other existing one, is left alone.
DO $$
BEGIN
  IF (SELECT array_agg(column_name::text ORDER BY column_name::text) FROM information_schema.columns
      WHERE table_schema = 'auth' AND table_name = 'users') = ARRAY['created_at', 'email', 'id'] THEN
    ALTER TABLE auth.users ADD COLUMN is_sso_user boolean NOT NULL DEFAULT false;
    ALTER TABLE auth.users DROP CONSTRAINT IF EXISTS users_email_key;
    CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE (is_sso_user = false);
  END IF;
END
$$;
