"""The base of every JSON request body of the API.

A field a body does not know is refused (422, naming it), never ignored: ignored, a misspelt
or unsupported field silently changed what a job did. ``{"repo": "archive", "dry_run":
false}`` pruned the default repository, and a restore's ``path_b64`` (before restores took
it) restored the whole snapshot. Every dashboard form sends only its model's fields
(tests/server/test_dashboard.py checks the templates).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """A request body: unknown fields are an error (pydantic's ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")
