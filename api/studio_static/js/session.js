// Who is signed in, and the bearer token the API calls carry.
//
// The token is kept in sessionStorage, not localStorage and not only in memory: it survives a reload and the round
// trip through Stripe Checkout (same tab), but it is gone when the tab closes and is never shared with other tabs or
// sent by the browser on its own (so no CSRF). The strict CSP (no inline or third-party scripts) guards it from XSS.
// In Supabase mode supabase-js keeps its session in sessionStorage too; only the PKCE code verifier of a magic link
// goes to localStorage, because the link opens in a new tab. The URL then carries a one-time code, never a token.

import { post } from "./api.js";

const TOKEN_KEY = "studio.token";
let supabase = null;
let supabaseToken = null;

export async function startSession(config, onChange) {
  if (config.mode !== "supabase") return;
  await loadScript("/studio/vendor/supabase.umd.js");
  const storage = {
    getItem: (key) => (key.endsWith("-code-verifier") ? localStorage : sessionStorage).getItem(key),
    setItem: (key, value) => (key.endsWith("-code-verifier") ? localStorage : sessionStorage).setItem(key, value),
    removeItem: (key) => (key.endsWith("-code-verifier") ? localStorage : sessionStorage).removeItem(key),
  };
  supabase = window.supabase.createClient(config.supabase_url, config.supabase_anon_key, {
    auth: { flowType: "pkce", storage, persistSession: true, autoRefreshToken: true, detectSessionInUrl: true },
  });
  const { data } = await supabase.auth.getSession();
  supabaseToken = data.session ? data.session.access_token : null;
  supabase.auth.onAuthStateChange((_event, session) => {
    const next = session ? session.access_token : null;
    if (next !== supabaseToken) {
      supabaseToken = next;
      onChange();
    }
  });
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || supabaseToken;
}

export async function signInLocal() {
  const session = await post("/v1/auth/local");
  sessionStorage.setItem(TOKEN_KEY, session.access_token);
}

export function useApiKey(key) {
  sessionStorage.setItem(TOKEN_KEY, key.trim());
}

export async function signInWithEmail(email) {
  const redirect = `${location.origin}/`;
  const { error } = await supabase.auth.signInWithOtp({ email, options: { emailRedirectTo: redirect } });
  if (error) throw error;
}

export async function signInWithProvider(provider) {
  const { error } = await supabase.auth.signInWithOAuth({ provider, options: { redirectTo: `${location.origin}/` } });
  if (error) throw error;
}

export async function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (supabase) await supabase.auth.signOut();
  supabaseToken = null;
}
