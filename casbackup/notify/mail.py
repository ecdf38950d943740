"""Email over SMTP: STARTTLS by default, login from an environment variable or a file."""

from __future__ import annotations

import json
import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event
from casbackup.notify.deadline import Deadline

SECRET_MAX = 64 * 1024


def smtp_password(config: NotifierConfig) -> str | None:
    """The SMTP password: only from the variable ``password_env`` names or ``password_file``
    (never the config itself, as for repository passphrases). Raises ValueError if the
    named source is missing."""
    if config.password_env:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ValueError(f"password_env names {config.password_env}, which is not set")
        return value
    if config.password_file:
        with open(config.password_file, "rb") as f:
            data = f.read(SECRET_MAX + 1)
        if len(data) > SECRET_MAX:
            raise ValueError(f"{config.password_file} is too large for a password")
        return data.decode().rstrip("\r\n")
    return None


class EmailNotifier:
    """One mail per event to ``to``; the body is the text report plus the JSON event."""

    uses_network = True

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    def send(self, event: Event) -> None:
        c = self.config
        msg = EmailMessage()
        msg["Subject"] = event.subject
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.to)
        text = "\n".join([event.subject, "", event.message, *event.warnings[:20]])
        msg.set_content(text + "\n\n" + json.dumps(event.as_json(), indent=1, sort_keys=True))
        password = smtp_password(c)
        # The whole exchange within `timeout` seconds, not each read (notify/deadline.py).
        with Deadline(c.timeout, f"SMTP {c.host}:{c.port}") as deadline:
            with _WatchedSMTP(deadline, c.host, c.port, timeout=c.timeout) as smtp:
                if c.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=c.cafile))
                    deadline.watch(smtp.sock)  # the TLS socket that took the plain one's place
                if c.username:
                    if password is None:
                        raise ValueError("username is set but no password_env or password_file")
                    smtp.login(c.username, password)
                smtp.send_message(msg)


class _WatchedSMTP(smtplib.SMTP):
    """SMTP whose socket the deadline shuts down, from the connection on (the greeting
    is read while connecting)."""

    def __init__(self, deadline: Deadline, *args: Any, **kwargs: Any) -> None:
        self._deadline = deadline
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock
