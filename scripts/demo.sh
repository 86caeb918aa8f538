#!/usr/bin/env bash
# The main job: the seed's CLI workflows on the local provider, end to end.
set -euo pipefail
NEXUS=${NEXUS:-nexus}
command -v "$NEXUS" >/dev/null || NEXUS="python3 -m nexus_jupyter"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say "nexus sandbox create multi-lang --ttl 30 --json | jq -r .sandbox_id"
SANDBOX=$($NEXUS sandbox create multi-lang --ttl 30 --json | jq -r '.sandbox_id')
echo "$SANDBOX"
trap '$NEXUS sandbox stop "$SANDBOX" >/dev/null 2>&1 || true' EXIT

say "nexus sandbox run \$SANDBOX -c \"print('Hello World')\""
$NEXUS sandbox run "$SANDBOX" -c "print('Hello World')"

say "python writes data.json"
$NEXUS sandbox run "$SANDBOX" -l python -c "
import json
data = {'count': 42}
with open('data.json', 'w') as f:
    json.dump(data, f)
print('wrote data.json')
"
say "javascript reads it"
$NEXUS sandbox run "$SANDBOX" -l javascript -c "
const fs = require('fs');
const data = JSON.parse(fs.readFileSync('data.json'));
console.log('Count:', data.count);
"
say "bash looks around"
$NEXUS sandbox run "$SANDBOX" -l bash -c "cat data.json; echo; ls -lh; df -h /home/user"

say "untrusted code cannot reach the network or read host files"
$NEXUS sandbox run "$SANDBOX" -c "
import socket
try:
    socket.create_connection(('1.1.1.1', 80), timeout=2)
except OSError as exc:
    print('network:', exc)
try:
    open('/etc/shadow').read()
except OSError as exc:
    print('host files:', exc)
"

say "nexus sandbox run \$SANDBOX -c 'import time; time.sleep(100)' --timeout 2"
$NEXUS sandbox run "$SANDBOX" -c "import time; time.sleep(100)" --timeout 2 || echo "(exit code $?)"

say "nexus sandbox pause / list --verify / resume"
$NEXUS sandbox pause "$SANDBOX" >/dev/null
$NEXUS sandbox list --verify
$NEXUS sandbox resume "$SANDBOX" >/dev/null

say "nexus sandbox status \$SANDBOX"
$NEXUS sandbox status "$SANDBOX"

say "nexus sandbox stop \$SANDBOX"
$NEXUS sandbox stop "$SANDBOX" --json | jq '{sandbox_id, status, stopped_at}'
trap - EXIT
