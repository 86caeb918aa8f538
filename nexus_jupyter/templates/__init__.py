"""Sandbox images for the Docker provider, built with no image registry.

``build_template`` makes the default image in two steps:
1. the base: a minimal Debian root filesystem made with debootstrap from
   Debian's package mirror and imported into Docker (only if the engine
   does not have it yet);
2. the template: ``templates/default/Dockerfile`` built ``FROM`` that base,
   its packages installed from the same mirror.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ProviderUnavailable, SandboxError

DEFAULT_TAG = "nexus-jupyter-sandbox:latest"
BASE_IMAGE = "nexus-debian:bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TEMPLATE_DIR = Path(__file__).resolve().parent / "default"

Progress = Callable[[str], None]


def image_exists(client, name: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(name)
        return True
    except ImageNotFound:
        return False


def build_base(client, base: str, mirror: str, progress: Progress) -> None:
    """debootstrap a minimal Debian into a temporary directory and import it as ``base``."""
    if os.geteuid() != 0:
        raise ProviderUnavailable(f"making the base image {base} with debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise ProviderUnavailable(
            f"making the base image {base} needs debootstrap: install it with 'apt-get install debootstrap'"
        )
    suite = base.rpartition(":")[2] or "bookworm"
    with tempfile.TemporaryDirectory(prefix="nexus-rootfs-") as workdir:
        rootfs = Path(workdir) / "rootfs"
        progress(f"debootstrap {suite} from {mirror} (a few minutes)")
        command = ["debootstrap", "--variant=minbase", suite, str(rootfs), mirror]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            tail = []
            for line in proc.stdout:
                tail = [*tail[-20:], line.rstrip()]
                if line.startswith(("I: Retrieving Release", "I: Validating", "I: Installing core", "I: Base")):
                    progress(line.rstrip())
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed: {tail[-1] if tail else 'no output'}")
        archive = Path(workdir) / "rootfs.tar"
        progress(f"importing the root filesystem as {base}")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        repository, _, tag = base.rpartition(":")
        client.api.import_image(src=str(archive), repository=repository, tag=tag)


def build_template(
    client,
    tag: str = DEFAULT_TAG,
    base: str = BASE_IMAGE,
    mirror: str = DEFAULT_MIRROR,
    rebuild_base: bool = False,
    progress: Progress = print,
) -> str:
    """Build the default sandbox image; returns its id.  Streams progress lines to ``progress``."""
    if rebuild_base or not image_exists(client, base):
        build_base(client, base, mirror, progress)
    else:
        progress(f"base image {base} is already on the engine")
    progress(f"building {tag} from {TEMPLATE_DIR / 'Dockerfile'}")
    image_id = None
    # The build's RUN steps reach Debian's mirror the way this machine does.
    for chunk in client.api.build(
        path=str(TEMPLATE_DIR),
        tag=tag,
        buildargs={"BASE": base},
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "error" in chunk:
            raise SandboxError(f"the image build failed: {chunk['error'].strip()}")
        line = chunk.get("stream", "").rstrip()
        if line.startswith("Step "):
            progress(line)
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    if image_id is None:
        image_id = client.images.get(tag).id
    progress(f"built {tag} ({image_id[:19]})")
    return image_id
