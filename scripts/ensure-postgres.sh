#!/usr/bin/env bash
# PostgreSQL's programs for the shared-store tests: each test run starts a throwaway cluster of
# its own (tests/postgres_cluster.py); no server is left running by this script.
set -euo pipefail
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "==> apt-get install postgresql (for the shared-store tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
else
  echo "==> no PostgreSQL: the PostgreSQL store tests will be skipped (sudo apt-get install postgresql)" >&2
fi
