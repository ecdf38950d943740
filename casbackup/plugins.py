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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from casbackup.errors import UsageError

log = logging.getLogger("casbackup.plugins")

GROUPS: dict[str, str] = {
    "backend": "casbackup.backends",
    "engine": "casbackup.engines",
    "snapshot_provider": "casbackup.snapshot_providers",
    "notifier": "casbackup.notifiers",
}
OWN_PACKAGE = "casbackup"
_said_offline: set[tuple[str, str]] = set()  # (kind, name) already logged as off


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
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[kind]):
        # The first distribution on sys.path wins a name, as importlib's own lookup does;
        # the same dist seen twice (an editable install) is one plugin.
        found.setdefault(ep.name, ep)
    return sorted(found.values(), key=lambda ep: ep.name)


def _describe(kind: str, ep: EntryPoint, offline_mode: bool) -> tuple[PluginInfo, Any]:
    dist = ep.dist
    package = dist.metadata["Name"] if dist is not None else ""
    version = dist.version if dist is not None else ""
    base = {"kind": kind, "name": ep.name, "package": package or "", "version": version or ""}
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
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
    *, offline_mode: bool = True, kinds: tuple[str, ...] = tuple(GROUPS)
) -> list[PluginInfo]:
    """Every plugin of the given kinds, loaded to learn whether it works and what it declares.

    Never raises for a plugin's own fault; each one that is off says why in ``reason``."""
    infos: list[PluginInfo] = []
    for kind in kinds:
        for ep in _entry_points(kind):
            info, _obj = _describe(kind, ep, offline_mode)
            _log_off(info)
            infos.append(info)
    return infos


def load(kind: str, name: str, *, offline_mode: bool = True) -> Any:
    """The object a plugin's entry point names. Raises PluginError (one line: unknown
    name with the known ones, failed import, or off because of offline mode)."""
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r}")
    eps = _entry_points(kind)
    for ep in eps:
        if ep.name == name:
            info, obj = _describe(kind, ep, offline_mode)
            _log_off(info)
            if not info.enabled:
                raise PluginError(f"{kind} plugin {name!r} ({info.package}) is off: {info.reason}")
            return obj
    known = ", ".join(ep.name for ep in eps) or "none"
    raise PluginError(f"no {kind} plugin named {name!r} (installed: {known})")


def _log_off(info: PluginInfo) -> None:
    if info.enabled or (info.kind, info.name) in _said_offline:
        return
    _said_offline.add((info.kind, info.name))
    log.warning("%s plugin %r from %s is off: %s", info.kind, info.name, info.package, info.reason)
