"""MySQL/MariaDB client credentials: an option file passed through a pipe.

User, password, host, port, socket and SSL mode go in an option file that is an anonymous
pipe, ``--defaults-extra-file=/dev/fd/N``: never argv (visible in ``ps``), never a file on
disk. Shared by the engine (mysql.py) and the accounts file (my_users.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from casbackup.engines.base import DatabaseSpec, resolve_password


def _option_value(value: str) -> str:
    """Quote a value for a MySQL/MariaDB option file.

    The option-file parser strips one pair of matching quotes and then decodes backslash
    escapes (\\\\, \\", \\n, ...); inside quotes `#` does not start a comment.
    """
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def option_file_text(spec: DatabaseSpec, password: str | None) -> str:
    lines = ["[client]"]
    for key, value in (
        ("user", spec.user),
        ("password", password),
        ("host", spec.host),
        ("port", str(spec.port) if spec.port else None),
        ("socket", spec.options.get("socket")),
        ("ssl-mode", spec.options.get("ssl_mode")),
    ):
        if value is not None:
            lines.append(f"{key}={_option_value(value)}")
    return "\n".join(lines) + "\n"


@contextmanager
def credentials_fd(spec: DatabaseSpec) -> Iterator[int]:
    """An option file readable once through a pipe; yields the child's end of it.

    The text is written before the child starts: it is far below the pipe buffer (64 KiB),
    so the write cannot block, and the parent closes its end so the child sees EOF.
    """
    text = option_file_text(spec, resolve_password(spec)).encode("utf-8")
    r, w = os.pipe()
    try:
        os.write(w, text)
    finally:
        os.close(w)
    try:
        yield r
    finally:
        os.close(r)
