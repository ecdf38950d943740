"""The webhook and the healthchecks-style ping: HTTP requests with a bounded wait."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event
from casbackup.notify.deadline import Deadline

MAX_RESPONSE = 64 * 1024  # read (and drop) at most this much of an answer


def _request(url: str, body: bytes | None, content_type: str, timeout: float) -> int:
    """One request (POST when there is a body), all of it within ``timeout`` seconds (see
    notify/deadline.py); raises on a non-2xx status or a network fault."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) URL")
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("User-Agent", "casbackup")
    if body is not None:
        req.add_header("Content-Type", content_type)
    with Deadline(timeout, url) as deadline:
        opener = urllib.request.build_opener(_Http(deadline), _Https(deadline))
        with opener.open(req, timeout=timeout) as resp:
            resp.read(MAX_RESPONSE)
            return int(resp.status)


def _watched(base: type[http.client.HTTPConnection], deadline: Deadline) -> Any:
    """``base`` whose socket ``deadline`` shuts down when the time is up."""

    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _Http(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_watched(http.client.HTTPSConnection, self.deadline), req,
                            context=self._context)  # type: ignore[attr-defined]  # fmt: skip


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
