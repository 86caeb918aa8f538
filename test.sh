#!/usr/bin/env bash
# The whole test suite: real bubblewrap boxes, real SQLite, the real CLI.
# Installs what it needs first (idempotent), so it works on a fresh clone.
#   ./test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
