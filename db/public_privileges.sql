-- Run by db.migrate after every run, in one transaction: anon and authenticated (Supabase's API roles) hold nothing
-- in schema public beyond what a row-level-security policy gives them, on every table, view, sequence and routine,
-- whichever migration created it.
--
-- Why here and not in a numbered migration: Supabase's public-schema default privileges grant ALL on every new
-- table, sequence and function to anon, authenticated and service_role, so each later migration would need its
-- own revokes, and a forgotten one stays open (schema_migrations kept TRUNCATE, ledger_entries_id_seq kept
-- nextval/setval, REVOKE ... FROM PUBLIC left the direct grants on five trigger functions). An event trigger
-- would need a superuser, which Supabase's postgres role is not; this step runs as whoever migrates.
--
-- Tables and views: anon and authenticated keep a privilege only if they held it and a policy on the table (with
-- row level security on) gives that role (or PUBLIC) that command; column grants go with REVOKE ALL. PUBLIC keeps
-- nothing. Sequences: nothing (no policy lets these roles insert). Routines: no EXECUTE for PUBLIC, anon or
-- authenticated, unless a policy's expression calls the routine (then its grants are left as they are).
-- service_role (BYPASSRLS, the server side) and the owner are untouched.
DO $$
DECLARE
  obj record;
  kept text[];
BEGIN
  FOR obj IN
    SELECT c.oid, c.oid::regclass::text AS name, c.relrowsecurity, r.oid AS role_oid, r.rolname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN pg_roles r
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND r.rolname IN ('anon', 'authenticated')
    ORDER BY c.oid, r.rolname
  LOOP
    SELECT coalesce(array_agg(DISTINCT held.privilege_type), '{}') INTO kept
    FROM aclexplode((SELECT relacl FROM pg_class WHERE oid = obj.oid)) AS held
    JOIN pg_policy p ON p.polrelid = obj.oid AND (obj.role_oid = ANY (p.polroles) OR 0::oid = ANY (p.polroles))
    WHERE obj.relrowsecurity
      AND held.grantee = obj.role_oid
      AND held.privilege_type = ANY (CASE p.polcmd WHEN 'r' THEN ARRAY['SELECT'] WHEN 'a' THEN ARRAY['INSERT']
                                                   WHEN 'w' THEN ARRAY['UPDATE'] WHEN 'd' THEN ARRAY['DELETE']
                                                   ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END);
    EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC, %I', obj.name, obj.rolname);
    IF cardinality(kept) > 0 THEN
      EXECUTE format('GRANT %s ON TABLE %s TO %I', array_to_string(kept, ', '), obj.name, obj.rolname);
    END IF;
  END LOOP;

  FOR obj IN
    SELECT c.oid::regclass::text AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind = 'S'
  LOOP
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, anon, authenticated', obj.name);
  END LOOP;

  FOR obj IN
    SELECT p.oid::regprocedure::text AS name
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_policy'::regclass AND d.refclassid = 'pg_proc'::regclass
                        AND d.refobjid = p.oid)
  LOOP
    EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC, anon, authenticated', obj.name);
  END LOOP;
END
$$;
