"""``python -m e2b_double --data-dir DIR [--port 0]`` (with ``tests/`` on the path): serve the
double on loopback; prints ``listening on http://127.0.0.1:PORT`` once it answers, ends every
sandbox on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from nexus_jupyter.providers.base import private_dir

from .app import DoubleApp
from .cloud import Cloud


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-"):
        pass  # one line per request would drown the test logs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="e2b_double")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-sandboxes-per-team", type=int, default=20)
    args = parser.parse_args(argv)
    cloud = Cloud(private_dir(args.data_dir), args.max_sandboxes_per_team)
    server = make_server("127.0.0.1", args.port, DoubleApp(cloud), threaded=True, request_handler=QuietHandler)
    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        cloud.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
