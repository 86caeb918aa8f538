#!/usr/bin/env bash
# One command on a fresh Linux machine: install what nexus-jupyter needs, then
# run the main job (the seed's workflows on the local provider).
#   ./setup.sh            set up and run the demo
#   ./setup.sh --no-demo  set up only
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v node >/dev/null || need_apt+=(nodejs)
command -v jq >/dev/null || need_apt+=(jq)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "==> missing: ${need_apt[*]} — install them with: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
echo "==> pip install -e . (with test extras)"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -i "running pip as the 'root' user" || true

if [ "${1:-}" != "--no-demo" ]; then
  exec bash scripts/demo.sh
fi
