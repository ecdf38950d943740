"""The web service: ``casbackup serve`` (FastAPI under uvicorn).

Modules (layering: this package is a face beside the command line; it never imports from ``cli/``,
tests/server/test_layering.py checks it):

- ``settings.py``  every option in one frozen ``Settings`` (built by ``cli/cmd_serve.py``).
- ``statedb.py``   the service's SQLite database in ``--state-dir`` (schema versioned by
                   ``PRAGMA user_version``, migrations in ``MIGRATIONS``).
- ``accounts.py``  users/roles/app scopes, API tokens (hash only), sessions; no FastAPI, the
                   CLI's ``user``/``token`` commands use it too.
- ``auth.py``      the dependencies ``current_user`` and ``require(permission, app=...)``,
                   ``PERMISSIONS`` (permission -> lowest role).
- ``login_limit.py`` failed logins per client and name, per client, per name (no lockouts).
- ``audit.py``     the audit log (written by the middleware in ``app.py`` for every
                   state-changing request, by the login route, the scheduler and the CLI).
- ``repos.py``     the config, and one read handle per repository (default + per-app ones).
- ``events.py``    server-sent events fan-out (``GET /api/events``).
- ``jobs.py``      background jobs: queue, one writer per repository, state in the database;
                   each job runs in ``worker.py`` (``python -m casbackup.server.worker``), which
                   calls the same library functions as the CLI and reports progress as JSON lines.
- ``job_records.py`` what jobs are and were: job documents, lists, logs, counts (reads only).
- ``scheduler.py`` cron / interval schedules, missed runs, restore drills.
- ``metrics.py``   ``/metrics`` (Prometheus), one registry per app.
- ``service.py``   all of the above wired together: ``request.app.state.service``.
- ``app.py``       ``create_app(settings)``; ``errors.py`` maps ``CasError`` to HTTP statuses.
- ``routes_*.py``  routers by resource (system, auth, admin, jobs, snapshots, maintenance);
                   request/response models beside their routes. The seed's four endpoints:
                   ``POST /api/backup``, ``POST /api/disaster-recovery`` (routes_jobs),
                   ``GET /api/applications``, ``GET /api/system/status`` (routes_system).

Authentication and permissions (for route authors, the dashboard included)::

    from fastapi import Depends
    from casbackup.server.auth import Principal, current_user, optional_user, require

    @router.get("/api/things")
    def things(p: Principal = Depends(require("view"))): ...          # role check (403)

    @router.post("/api/apps/{app}/backup")
    def run(app: str, p: Principal = Depends(require("backup", app="app"))): ...
        # also: an application the caller may not see answers 404 (never 403)

``Principal`` has ``name``, ``role``, ``apps`` (None = all), ``via`` (session/token/proxy),
``csrf`` (session callers), ``has(permission)``, ``sees(app)``, ``check(permission, app)``.
Permissions: view, browse, backup, verify, check, restore, download, cancel, cancel_any, forget, prune,
recover, unlock, users, tokens, audit, config (see ``auth.PERMISSIONS``).

Browser sessions: ``POST /api/auth/login`` (JSON ``{"username", "password"}``) sets the
``casbackup_session`` cookie (HttpOnly, SameSite=Strict, Secure behind TLS) and returns the
session's ``csrf_token``; ``GET /api/auth/me`` returns it again. Every non-GET request made with
the cookie must carry it as header ``X-CSRF-Token`` or as form field ``csrf_token``, or it gets
403. ``optional_user`` returns None instead of raising 401 (for a login page).

A dashboard mounts like this (files: ``server/dashboard*.py``, ``server/templates/``,
``server/static/``; no page may load anything from another host)::

    # server/dashboard.py
    router = APIRouter(include_in_schema=False)   # HTML pages stay out of the OpenAPI schema
    templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

    # and add "dashboard" to app.ROUTER_MODULES; static files:
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

HTML routes must use the same ``require(...)`` dependencies as the API (the role-matrix test in
tests/server enumerates every route of the app, pages included). Redirect a 401 to the login
page in the page's own handler (``optional_user``), not by weakening the dependency.
"""
