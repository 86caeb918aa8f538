#!/usr/bin/env bash
# One command on a fresh Linux machine: install what nexus-jupyter needs, run
# the main job (the seed's CLI workflows on the local provider), then open
# JupyterLab on the quickstart notebook.
#   ./setup.sh             set up, run the demo, start JupyterLab on notebooks/quickstart.ipynb
#   ./setup.sh --headless  set up, run the demo, execute both notebooks without a browser
#   ./setup.sh --no-demo   set up only
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-lab}

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v node >/dev/null || need_apt+=(nodejs)
command -v jq >/dev/null || need_apt+=(jq)
# --allow-internet for local sandboxes: user-mode networking in the box's own namespace
command -v slirp4netns >/dev/null || need_apt+=(slirp4netns)
command -v ip >/dev/null || need_apt+=(iproute2)
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
extras="test"
[ "$mode" = "--no-demo" ] || extras="test,lab"
echo "==> pip install -e .[$extras]"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v -i "running pip as the 'root' user" || true
# Bytecode now, not at each call: an environment with PYTHONDONTWRITEBYTECODE would compile on every `nexus` call.
"$PYTHON" -m compileall -q nexus_jupyter >/dev/null

case "$mode" in
  --no-demo) ;;
  --headless)
    bash scripts/demo.sh
    echo "==> executing notebooks/quickstart.ipynb and notebooks/data-analysis.ipynb (outputs in notebooks/executed/)"
    mkdir -p notebooks/executed
    for nb in quickstart data-analysis; do
      # executed in a copy, so the files it makes (sales.csv, report.md) land beside it, not in the sources
      cp "notebooks/$nb.ipynb" notebooks/executed/
      "$PYTHON" -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=300 \
        "notebooks/executed/$nb.ipynb"
    done
    ;;
  *)
    bash scripts/demo.sh
    echo "==> starting JupyterLab on notebooks/quickstart.ipynb (Ctrl-C to stop; ./setup.sh --headless runs it without a browser)"
    lab_args=(--notebook-dir="$PWD/notebooks")
    [ "$(id -u)" = 0 ] && lab_args+=(--allow-root)
    [ -z "${DISPLAY:-}" ] && lab_args+=(--no-browser)
    exec "$PYTHON" -m jupyter lab "${lab_args[@]}" "$PWD/notebooks/quickstart.ipynb"
    ;;
esac
