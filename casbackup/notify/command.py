"""Run a command per event: the event as JSON on stdin and as CASBACKUP_EVENT_* variables."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event


class CommandNotifier:
    """Runs ``command`` split into words as a shell would, never by a shell; a non-zero
    exit or a timeout is a failure (logged, never failing the backup)."""

    uses_network = False  # what the command does is the user's own choice

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    def send(self, event: Event) -> None:
        argv = shlex.split(self.config.command)
        env = dict(os.environ)
        # Our own secrets are not the command's business.
        for key in [k for k in env if k.startswith("CASBACKUP_")]:
            del env[key]
        env.update(
            CASBACKUP_EVENT=event.kind,
            CASBACKUP_EVENT_APP=event.app,
            CASBACKUP_EVENT_SNAPSHOT=event.snapshot or "",
            CASBACKUP_EVENT_MESSAGE=event.message,
        )
        proc = subprocess.run(
            argv,
            input=json.dumps(event.as_json(), sort_keys=True).encode(),
            env=env,
            capture_output=True,
            timeout=self.config.timeout,
        )
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {tail[0]}")
