#!/usr/bin/env bash
# Make a Docker engine and the default sandbox image available (for the Docker
# provider and its tests): install docker.io and debootstrap if missing, start
# dockerd if nothing answers, build the image (cached after the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
engine_up() { "$PYTHON" -c "import docker; docker.from_env(timeout=5).ping()" >/dev/null 2>&1; }
if ! engine_up; then
  echo "==> starting dockerd (log: /var/log/nexus-dockerd.log)"
  nohup dockerd >/var/log/nexus-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do engine_up && break; sleep 0.5; done
  engine_up || { echo "dockerd did not start: see /var/log/nexus-dockerd.log" >&2; exit 1; }
fi

echo "==> nexus sandbox template build"
"$PYTHON" -m nexus_jupyter sandbox template build
