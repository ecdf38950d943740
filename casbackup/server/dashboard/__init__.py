"""The dashboard: server-rendered pages at ``/`` (issue 13).

- ``pages.py``   the GET pages (overview, application, snapshot browser, jobs, recovery, admin,
                 login). Each page reads through the same functions the API routes use.
- ``views.py``   summaries a page needs that no API route returns whole (overview cards,
                 repository health, the 30-day strip).
- ``charts.py``  inline SVG charts.
- ``testids.py`` every ``data-testid`` in one place.

Every state change goes through the JSON API itself: a form carries ``data-api`` (the API
route) and the session's CSRF token, and ``static/dash.js`` sends it with the token in the
``X-CSRF-Token`` header. So the dashboard has no write path of its own: roles, CSRF, the audit
log and validation are the API's, and a forged request gets the API's 403. Buttons a role may
not use are not rendered (``principal.has``), and the server refuses them anyway.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from casbackup.server.dashboard.pages import router

STATIC = Path(__file__).resolve().parent.parent / "static"

__all__ = ["router", "mount_static"]


def mount_static(app: FastAPI) -> None:
    """Serve ``server/static`` at ``/static`` (no authentication: the login page needs it;
    it holds only the stylesheet and script)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
