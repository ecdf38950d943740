"""The webhook and the healthchecks-style ping: HTTP requests with a bounded wait."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event

MAX_RESPONSE = 64 * 1024  # read (and drop) at most this much of an answer


def _request(url: str, body: bytes | None, content_type: str, timeout: float) -> int:
    """One request (POST when there is a body); raises on a non-2xx status or a network fault."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) URL")
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("User-Agent", "casbackup")
    if body is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked
        resp.read(MAX_RESPONSE)
        return int(resp.status)


class WebhookNotifier:
    """POSTs the event as JSON (``Event.as_json``) to ``url``."""

    uses_network = True

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    def send(self, event: Event) -> None:
        body = json.dumps(event.as_json(), sort_keys=True).encode()
        _request(self.config.url, body, "application/json", self.config.timeout)


class HealthchecksNotifier:
    """healthchecks.io's protocol: ``URL/start`` when a backup starts, ``URL`` on success
    (and on warning: the backup was saved), ``URL/fail`` on failure and verify failure.
    The body is a short text report (healthchecks shows it)."""

    uses_network = True

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    def send(self, event: Event) -> None:
        base = self.config.url.rstrip("/")
        suffix = {
            "start": "/start",
            "failure": "/fail",
            "verify_failure": "/fail",
            "overdue": "/fail",
        }.get(event.kind, "")
        text = "\n".join([event.subject, event.message, *event.warnings[:20]]).strip()
        _request(base + suffix, text.encode(), "text/plain; charset=utf-8", self.config.timeout)
