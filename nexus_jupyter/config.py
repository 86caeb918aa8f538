"""The settings as traitlets, for hosts that have a config system: Jupyter Server and IPython.

    # jupyter_server_config.py
    c.SandboxService.default_ttl = 60
    c.LocalProvider.pool_size = 2
    c.DockerProvider.pool_size = 1
    c.NexusSandboxApp.reap_interval = 15

    # in a notebook, after %load_ext nexus_jupyter
    %config SandboxService.default_timeout = 120

The section names are the names of the classes they configure (``SandboxService``,
``LocalProvider``, ``DockerProvider``), as Jupyter's own config reads; the classes
here carry only the traits and push each value (at start and on every change)
into the plain ``Settings`` a service reads (settings.py).  A trait that is not set
takes its environment variable, else the default, from the same table the CLI uses.
"""

from __future__ import annotations

from traitlets import Float, Int, TraitError, Unicode, default, observe, validate
from traitlets.config import Configurable

from .errors import InvalidArgument
from .settings import POOL_SETTINGS, SERVICE_SETTINGS, Settings

_TRAIT_TYPES = {str: Unicode, int: Int, float: Float}


def _trait(setting):
    trait_type = _TRAIT_TYPES[type(setting.default)]
    return trait_type(help=f"{setting.help} [env: {setting.env}; default: {setting.default!r}]").tag(config=True)


def _from_environment(name: str):
    """The dynamic default of trait ``name``: its environment variable, else the table's default."""
    return default(name)(lambda self: SERVICE_SETTINGS[name].from_environment())


def _checked(setting, proposal):
    try:
        return setting.check(proposal["value"], f"{proposal['owner'].__class__.__name__}.{setting.name}")
    except InvalidArgument as exc:
        raise TraitError(str(exc)) from None


class SandboxService(Configurable):
    """Defaults and limits of the sandbox service (``nexus_jupyter.service.SandboxService``)."""

    default_provider = _trait(SERVICE_SETTINGS["default_provider"])
    default_ttl = _trait(SERVICE_SETTINGS["default_ttl"])
    default_timeout = _trait(SERVICE_SETTINGS["default_timeout"])
    default_memory_mb = _trait(SERVICE_SETTINGS["default_memory_mb"])
    max_output_chars = _trait(SERVICE_SETTINGS["max_output_chars"])
    max_file_mb = _trait(SERVICE_SETTINGS["max_file_mb"])
    max_sandboxes_per_user = _trait(SERVICE_SETTINGS["max_sandboxes_per_user"])
    database_url = _trait(SERVICE_SETTINGS["database_url"])
    host_id = _trait(SERVICE_SETTINGS["host_id"])

    _default_provider_default = _from_environment("default_provider")
    _default_ttl_default = _from_environment("default_ttl")
    _default_timeout_default = _from_environment("default_timeout")
    _default_memory_mb_default = _from_environment("default_memory_mb")
    _max_output_chars_default = _from_environment("max_output_chars")
    _max_file_mb_default = _from_environment("max_file_mb")
    _max_sandboxes_per_user_default = _from_environment("max_sandboxes_per_user")
    _database_url_default = _from_environment("database_url")
    _host_id_default = _from_environment("host_id")

    def __init__(self, settings: Settings | None = None, **kwargs):
        self.settings = settings if settings is not None else Settings()
        super().__init__(**kwargs)
        for name in SERVICE_SETTINGS:
            self.settings.set(name, getattr(self, name))

    @validate(*SERVICE_SETTINGS)
    def _check(self, proposal):
        return _checked(SERVICE_SETTINGS[proposal["trait"].name], proposal)

    @observe(*SERVICE_SETTINGS)
    def _push(self, change):
        self.settings.set(change["name"], change["new"])


class _PoolConfig(Configurable):
    """How many spare boxes this process keeps started for one provider."""

    provider = ""

    def __init__(self, settings: Settings | None = None, **kwargs):
        self.settings = settings if settings is not None else Settings()
        super().__init__(**kwargs)
        self.settings.set_pool_size(self.provider, self.pool_size)

    @default("pool_size")
    def _pool_size_from_environment(self):
        return POOL_SETTINGS[self.provider].from_environment()

    @validate("pool_size")
    def _check_pool_size(self, proposal):
        return _checked(POOL_SETTINGS[self.provider], proposal)

    @observe("pool_size")
    def _push_pool_size(self, change):
        self.settings.set_pool_size(self.provider, change["new"])


class LocalProvider(_PoolConfig):
    """The local (bubblewrap) provider's warm pool."""

    provider = "local"
    pool_size = _trait(POOL_SETTINGS["local"])


class DockerProvider(_PoolConfig):
    """The Docker provider's warm pool."""

    provider = "docker"
    pool_size = _trait(POOL_SETTINGS["docker"])


CONFIGURABLES = (SandboxService, LocalProvider, DockerProvider)


def configured_settings(parent=None, config=None) -> tuple[Settings, list[Configurable]]:
    """Settings read from a host's config (``parent``'s, or ``config``), and the configurables
    that keep them current: register those with the host (IPython's ``%config`` finds them there)."""
    settings = Settings()
    kwargs = {"parent": parent} if parent is not None else {"config": config} if config is not None else {}
    return settings, [cls(settings, **kwargs) for cls in CONFIGURABLES]
