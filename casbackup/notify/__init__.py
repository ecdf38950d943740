"""Notifiers: tell someone how an application's backup went.

Events (``Event.kind``): ``start``, ``success``, ``warning`` (saved, but some files could
not be read), ``failure`` (no snapshot), ``verify_failure`` (saved, but the snapshot failed
its verification), ``overdue`` (a scheduled backup did not succeed before its schedule's
next fire time: the service's scheduler sends it, server/scheduler.py). Each application lists its notifiers in the config
(``[[applications.notify]]``, see ``casbackup/config/model.py``); a notifier gets the
events its ``on`` list names.

A notifier is a plugin of the ``casbackup.notifiers`` entry-point group (the built-ins,
webhook, healthchecks, email and command, register there too): a class built from a
``NotifierConfig`` with a ``send(event)`` method that raises on failure. ``dispatch``
calls each one and never raises: a notifier that fails is logged and reported back as a
warning, and never fails the backup.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from casbackup.config.model import NotifierConfig
from casbackup.text import storable
from casbackup.units import plural

log = logging.getLogger("casbackup.notify")

EVENT_KINDS = ("start", "success", "warning", "failure", "verify_failure", "overdue")
BODY_VERSION = 1
MAX_LINES = 20  # warnings carried in a notification; the count says how many there were


@dataclass(frozen=True)
class Event:
    """What happened to one application's backup. JSON shape: ``as_json`` (documented in
    README "Notifications")."""

    kind: str  # one of EVENT_KINDS
    app: str
    message: str = ""
    snapshot: str | None = None  # the snapshot id (success, warning, verify_failure)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    host: str = field(default_factory=socket.gethostname)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["warnings"] = list(self.warnings[:MAX_LINES])
        doc["warnings_total"] = len(self.warnings)
        doc["version"] = BODY_VERSION
        doc["event"] = doc.pop("kind")
        return doc

    @property
    def subject(self) -> str:
        words = {
            "start": "started",
            "success": "succeeded",
            "warning": "finished with warnings",
            "failure": "FAILED",
            "verify_failure": "FAILED verification",
            "overdue": "is OVERDUE",
        }
        return f"casbackup: backup of {self.app} on {self.host} {words.get(self.kind, self.kind)}"


class NotifierFailed(Exception):
    """A notifier's own account of its failure, one line, shown as it is (other exceptions
    are shown with their class name)."""


class Notifier(Protocol):
    uses_network: bool

    def __init__(self, config: NotifierConfig) -> None: ...

    def send(self, event: Event) -> None:
        """Deliver one event; raise anything on failure (``dispatch`` catches it)."""


def dispatch(
    notifiers: tuple[NotifierConfig, ...],
    event: Event,
    *,
    offline_mode: bool,
    log_failures: bool = True,
) -> list[str]:
    """Send ``event`` to every notifier that wants it. Returns warnings (one per notifier
    that failed or is off), never raises: a notification never fails a backup. With
    ``log_failures`` (for callers that show no warnings of their own) each is logged too."""
    from casbackup import plugins

    warnings: list[str] = []
    # A warning naming a file that is not UTF-8 made healthchecks' and email's encoding
    # fail (the notice lost), and webhook bodies carry lone surrogate escapes that strict
    # JSON parsers refuse: every notifier gets the name's other bytes as \\xNN.
    event = replace(
        event, message=storable(event.message), warnings=tuple(storable(event.warnings))
    )
    for cfg in notifiers:
        if event.kind not in cfg.on:
            continue
        try:
            cls = plugins.load("notifier", cfg.type, offline_mode=offline_mode)
            cls(cfg).send(event)
        # A plugin's sys.exit() too: it must not end the backup it reports on (only a stop
        # signal, KeyboardInterrupt, goes through).
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a notifier's fault is only reported
            what = str(exc) if isinstance(exc, NotifierFailed) else f"{type(exc).__name__}: {exc}"
            text = f"notifier {cfg.label} failed for event {event.kind}: {what}"
            if log_failures:
                log.warning("%s", text)
            warnings.append(text)
    return warnings


class BackupNotice:
    """The notifications of one application's backup, for whoever runs it (CLI, server).

    ``warn`` receives one line per notifier that failed; nothing here raises."""

    def __init__(
        self,
        app: str,
        notifiers: tuple[NotifierConfig, ...],
        *,
        offline_mode: bool,
        warn: Any = None,
    ) -> None:
        self.app, self.notifiers, self.offline_mode = app, notifiers, offline_mode
        self.warn = warn

    def _send(self, event: Event) -> None:
        if not self.notifiers:
            return
        # A caller's own ``warn`` shows each failure; logging it too said it twice.
        lines = dispatch(
            self.notifiers, event, offline_mode=self.offline_mode, log_failures=self.warn is None
        )
        for line in lines if self.warn is not None else ():
            self.warn(line)

    def started(self) -> None:
        self._send(Event("start", self.app, "backup started"))

    def finished(self, snapshot: Any, warnings: list[str]) -> None:
        """``snapshot``: the saved Snapshot (None for a dry run: nothing is sent)."""
        if snapshot is None:
            return
        summary = asdict(snapshot.summary)
        if warnings:
            what = plural(len(warnings), "file or folder", "files or folders")
            message = f"snapshot {snapshot.short_id} saved; {what} could not be read"
            self._send(Event("warning", self.app, message, snapshot.id, summary, tuple(warnings)))
        else:
            message = f"snapshot {snapshot.short_id} saved"
            self._send(Event("success", self.app, message, snapshot.id, summary))

    def failed(
        self, exc: BaseException, snapshot: Any = None, *, verification: bool = False
    ) -> None:
        kind = "verify_failure" if verification else "failure"
        sid = snapshot.id if snapshot is not None else None
        self._send(Event(kind, self.app, str(exc), sid))
