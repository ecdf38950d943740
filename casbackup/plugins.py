"""Plugins found through Python entry points, in four groups.

| kind | entry-point group | name is |
|---|---|---|
| ``backend`` | ``casbackup.backends`` | the location scheme (``local``, ``s3``) |
| ``engine`` | ``casbackup.engines`` | the engine name in the config |
| ``snapshot_provider`` | ``casbackup.snapshot_providers`` | the provider in ``[snapshots]`` |
| ``notifier`` | ``casbackup.notifiers`` | the notifier ``type`` in the config |

casbackup's own backends, engines and notifiers register through the same groups (its
``pyproject.toml``), so a third-party package is found exactly as they are. An entry point
names an object (usually a class); an object with a true ``uses_network`` attribute
declares network use beyond the configured repository and databases, and with the
config's ``plugins.offline_mode = true`` (the default) such a plugin stays off; that is
logged once per process. A plugin that fails to import is reported with its error and
the others keep working: discovery never raises for one plugin's fault.

The config's ``plugins.enabled`` (default false, the seed's setting) says whether plugins
from other packages are used at all: when false, only casbackup's own are, and the others
are listed as off without being imported. The policy (``enabled``, ``offline_mode``) is
process-wide: ``configure`` sets it (the CLI and the service, from the config they load);
until then it is read once from the config file ``find_config_path`` finds (or the
defaults when there is none or it does not parse: the command that needs it says why).

Backends are opened by location scheme (``access.open_backend``): a backend entry point
names a callable ``(location: str, settings: dict[str, str]) -> Backend``.

``BUILTIN`` repeats casbackup's own entry points from pyproject.toml (a test keeps them
equal): an installation whose metadata predates one (an editable install not reinstalled)
still finds it, and another package can never take over a built-in name.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

from casbackup import __version__
from casbackup.errors import CasError, UsageError

log = logging.getLogger("casbackup.plugins")

GROUPS: dict[str, str] = {
    "backend": "casbackup.backends",
    "engine": "casbackup.engines",
    "snapshot_provider": "casbackup.snapshot_providers",
    "notifier": "casbackup.notifiers",
}
OWN_PACKAGE = "casbackup"
BUILTIN: dict[str, dict[str, str]] = {
    "backend": {"local": "casbackup.store.local:open_local", "s3": "casbackup.store.s3:open_s3"},
    "engine": {
        "sqlite": "casbackup.engines.sqlite:SqliteEngine",
        "postgresql": "casbackup.engines.postgresql:PostgresEngine",
        "mysql": "casbackup.engines.mysql:MysqlEngine",
    },
    "snapshot_provider": {
        "btrfs": "casbackup.fssnap.btrfs:BtrfsProvider",
        "lvm": "casbackup.fssnap.lvm:LvmProvider",
        "zfs": "casbackup.fssnap.zfs:ZfsProvider",
    },
    "notifier": {
        "webhook": "casbackup.notify.http:WebhookNotifier",
        "healthchecks": "casbackup.notify.http:HealthchecksNotifier",
        "email": "casbackup.notify.mail:EmailNotifier",
        "command": "casbackup.notify.command:CommandNotifier",
    },
}
OFF_BY_CONFIG = "plugins.enabled is false: only casbackup's own plugins are used"
_said_offline: set[tuple[str, str]] = set()  # (kind, name) already logged as off


@dataclass(frozen=True)
class Policy:
    """Which plugins may run: other packages' at all (``enabled``), network users not
    (``offline_mode``). The defaults are the config's."""

    enabled: bool = False
    offline_mode: bool = True


_policy: Policy | None = None
_config_path: str | None = None


def configure(*, enabled: bool, offline_mode: bool) -> None:
    """Set the process-wide policy (from the config's [plugins])."""
    global _policy
    _policy = Policy(enabled, offline_mode)


def use_config_path(path: str | None) -> None:
    """The config file a lazily read policy comes from (the CLI's --config); forgets
    a policy read from another file."""
    global _config_path, _policy
    _config_path, _policy = path, None


def policy() -> Policy:
    """The policy set by ``configure``, else read once from the config file."""
    global _policy
    if _policy is None:
        try:
            from casbackup.config.load import find_config_path, load_config

            path = find_config_path(_config_path)
            cfg = load_config(path).plugins if path is not None else None
        except CasError:  # a bad config: the command that reads it reports it
            cfg = None
        _policy = Policy(cfg.enabled, cfg.offline_mode) if cfg is not None else Policy()
    return _policy


# A plugin that is unknown, failed to load, or is off (offline mode): the user asked for
# something this installation cannot do, so a usage error (exit 2), one line.
PluginError = UsageError


@dataclass(frozen=True)
class PluginInfo:
    kind: str  # a key of GROUPS
    name: str
    package: str  # the distribution that declares it ("" when unknown)
    version: str
    target: str  # "module:attribute"
    enabled: bool
    reason: str  # why not enabled ("" when enabled)
    uses_network: bool = False

    @property
    def builtin(self) -> bool:
        return self.package == OWN_PACKAGE

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "target": self.target,
            "enabled": self.enabled,
            "reason": self.reason,
            "uses_network": self.uses_network,
            "builtin": self.builtin,
        }


def _entry_points(kind: str) -> list[EntryPoint]:
    # Imported here: every command loads its built-in backend, which needs none of this.
    from importlib.metadata import EntryPoint, entry_points

    group = GROUPS[kind]
    # Built-in names first and always: another package cannot take one over.
    found: dict[str, EntryPoint] = {
        name: EntryPoint(name, value, group) for name, value in BUILTIN[kind].items()
    }
    for ep in entry_points(group=group):
        # The first distribution on sys.path wins a name, as importlib's own lookup does;
        # the same dist seen twice (an editable install) is one plugin.
        found.setdefault(ep.name, ep)
    return sorted(found.values(), key=lambda ep: ep.name)


def _describe(
    kind: str, ep: EntryPoint, offline_mode: bool, enabled: bool = True
) -> tuple[PluginInfo, Any]:
    if BUILTIN[kind].get(ep.name) == ep.value:
        package, version = OWN_PACKAGE, __version__
    else:
        dist = ep.dist
        package = (dist.metadata["Name"] or "") if dist is not None else ""
        version = (dist.version or "") if dist is not None else ""
    base = {"kind": kind, "name": ep.name, "package": package, "version": version}
    if not enabled and package != OWN_PACKAGE:  # not even imported
        return PluginInfo(**base, target=ep.value, enabled=False, reason=OFF_BY_CONFIG), None
    try:
        obj = ep.load()
    # A broken plugin must not take the others down; nor may one that calls sys.exit()
    # when imported end the command that lists or loads it.
    except (Exception, SystemExit) as exc:
        reason = f"failed to load: {type(exc).__name__}: {exc}"
        return PluginInfo(**base, target=ep.value, enabled=False, reason=reason), None
    network = bool(getattr(obj, "uses_network", False))
    if offline_mode and network:
        reason = "offline_mode: it declares network use beyond the repository and databases"
        return (
            PluginInfo(**base, target=ep.value, enabled=False, reason=reason, uses_network=True),
            None,
        )
    return PluginInfo(**base, target=ep.value, enabled=True, reason="", uses_network=network), obj


def discover(
    *,
    offline_mode: bool | None = None,
    enabled: bool | None = None,
    kinds: tuple[str, ...] = tuple(GROUPS),
) -> list[PluginInfo]:
    """Every plugin of the given kinds, loaded to learn whether it works and what it declares
    (``offline_mode``/``enabled``: None takes the ``policy()``'s).

    Never raises for a plugin's own fault; each one that is off says why in ``reason``."""
    rules = policy()
    offline = rules.offline_mode if offline_mode is None else offline_mode
    others = rules.enabled if enabled is None else enabled
    infos: list[PluginInfo] = []
    for kind in kinds:
        for ep in _entry_points(kind):
            info, _obj = _describe(kind, ep, offline, others)
            _log_off(info)
            infos.append(info)
    return infos


def has(kind: str, name: str) -> bool:
    """Whether a plugin of ``kind`` is named ``name`` (enabled or not), without loading it.
    A built-in name is answered without scanning the installed distributions."""
    return name in BUILTIN[kind] or any(ep.name == name for ep in _entry_points(kind))


def names(kind: str) -> list[str]:
    """Every plugin name of ``kind`` (built-in or installed), without loading any."""
    return [ep.name for ep in _entry_points(kind)]


def load(
    kind: str, name: str, *, offline_mode: bool | None = None, enabled: bool | None = None
) -> Any:
    """The object a plugin's entry point names (``offline_mode``/``enabled``: None takes
    the ``policy()``'s). Raises PluginError (one line: unknown name with the known ones,
    failed import, or off because of offline mode or ``plugins.enabled``)."""
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r}")
    if name in BUILTIN[kind] and offline_mode is None:
        # Our own, and no caller's policy to apply: every command opens its backend this
        # way, so neither the installed distributions nor the config are read for it,
        # unless the plugin declares network use (then offline mode decides).
        try:
            obj = _load_builtin(BUILTIN[kind][name])
        except Exception as exc:  # an installation missing one of its own modules
            raise PluginError(
                f"{kind} plugin {name!r} (casbackup) is off: failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not getattr(obj, "uses_network", False):
            return obj
    rules = policy()
    offline = rules.offline_mode if offline_mode is None else offline_mode
    others = rules.enabled if enabled is None else enabled
    eps = _entry_points(kind)
    for ep in eps:
        if ep.name == name:
            info, obj = _describe(kind, ep, offline, others)
            _log_off(info)
            if not info.enabled:
                raise PluginError(f"{kind} plugin {name!r} ({info.package}) is off: {info.reason}")
            return obj
    known = ", ".join(ep.name for ep in eps) or "none"
    raise PluginError(f"no {kind} plugin named {name!r} (installed: {known})")


def _load_builtin(target: str) -> Any:
    """The object ``module:attribute`` names, as ``EntryPoint.load`` would find it, without
    importing importlib.metadata (about 9 ms of every command's start). Raises what the
    import or the attribute look-up raises."""
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def _log_off(info: PluginInfo) -> None:
    # Off by the user's own plugins.enabled = false: listed, never warned about.
    if info.enabled or info.reason == OFF_BY_CONFIG or (info.kind, info.name) in _said_offline:
        return
    _said_offline.add((info.kind, info.name))
    log.warning("%s plugin %r from %s is off: %s", info.kind, info.name, info.package, info.reason)
