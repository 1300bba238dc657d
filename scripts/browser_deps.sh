#!/usr/bin/env bash
# The browser the studio's tests drive: Debian's `chromium` (Playwright's own browser download is not reachable, and
# Playwright for Python itself comes with the dev extras). Idempotent: does nothing when /usr/bin/chromium exists.
# Installs with apt only as root; otherwise it says what to run, and tests/test_studio_browser.py fails (never skips)
# until chromium is there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium for the studio's browser tests (apt-get)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
else
  echo "warning: /usr/bin/chromium is missing; the studio's browser tests will fail until it is installed:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y chromium" >&2
fi
