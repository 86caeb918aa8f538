"""``python -m nexus_jupyter`` is the ``nexus`` command."""

from .cli import entry_point

entry_point()
