"""The package as a user installs it: an sdist that carries the built JupyterLab
extension, and a wheel built from it on a machine where Node.js does not run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BUILT = ROOT / "nexus_jupyter" / "labextension" / "static" / "style.js"

pytestmark = [
    pytest.mark.skipif(not BUILT.exists(), reason="the lab extension is not built (pip install -e . builds it)"),
    pytest.mark.skipif(
        shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare, as root, to hide Node.js"
    ),
]


def test_an_sdist_carries_the_built_extension_and_installs_without_nodejs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    [sdist] = tmp_path.glob("nexus_jupyter-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith("nexus_jupyter/labextension/package.json") for name in names)
    assert any("/nexus_jupyter/labextension/static/remoteEntry." in name for name in names)
    assert any(name.endswith("labextension/src/index.ts") for name in names)  # the sources, for a rebuild
    assert not any("node_modules" in name for name in names)

    # Node.js, npm and jlpm present but unable to run: a wheel from the sdist needs none of them
    hide = "".join(f"mount --bind /dev/null {path} && " for path in filter(None, map(shutil.which, ("node", "npm"))))
    wheel_dir = tmp_path / "wheel"
    built = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{hide}! node --version 2>/dev/null && exec "$0" -m pip wheel --no-deps -w "$1" "$2"',
         sys.executable, str(wheel_dir), str(sdist)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = wheel_dir.glob("nexus_jupyter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    shared = [name for name in names if "/share/jupyter/labextensions/nexus-jupyter/" in name]
    assert any(name.endswith("/install.json") for name in shared)
    assert any(name.endswith("/package.json") for name in shared)
    assert any("/static/remoteEntry." in name for name in shared)
    assert any(name.endswith("etc/jupyter/jupyter_server_config.d/nexus_jupyter.json") for name in names)
