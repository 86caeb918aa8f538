#!/usr/bin/env bash
# The whole test suite: real bubblewrap boxes, a real Docker engine, real
# SQLite, the real CLI.  Installs and starts what it needs first (idempotent),
# so it works on a fresh clone.
#   ./test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
scripts/ensure-docker.sh
scripts/ensure-browser.sh
scripts/ensure-postgres.sh
PYTHON=${PYTHON:-python3}
# The JupyterLab extension's own checks: its TypeScript linted and formatted, its logic unit-tested
# (jest). The build hook of `pip install -e .` (setup.sh) installed its node_modules.
(cd labextension && jlpm install --silent && jlpm lint && jlpm test --silent)
export NEXUS_TEST_PROVIDERS=${NEXUS_TEST_PROVIDERS:-local,docker}
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
