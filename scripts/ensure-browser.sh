#!/usr/bin/env bash
# The browser the UI tests drive: Debian's Chromium (Playwright cannot download its own here).
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "==> apt-get install chromium (for the browser tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "==> no /usr/bin/chromium: the browser tests will be skipped (sudo apt-get install chromium)" >&2
fi
