"""The service's ``recover`` job, run in the job's worker process (worker.py).

It differs from the CLI's recover in what the request may choose: the target is inside the
recovery directory (or in place: the config's sources), and a ``db_into`` is confined
(connection.confined_spec): no password source and no file the config does not name.
"""

from __future__ import annotations

from typing import Any

from casbackup.errors import RecoveryError, UnverifiedSnapshot, UsageError
from casbackup.plan_docs import recovery_plan_doc
from casbackup.server.worker import Job, emit

# What a recovery's messages call the CLI's options, in the request's words.
_RECOVER_FIELDS = {"--overwrite-databases": "'overwrite_databases': true", "--db-into": "db_into"}


def run_recover(job: Job) -> dict[str, Any]:
    """The ``recover`` job (params as routes_jobs.disaster_recovery sets them), as the CLI's
    recover with the request's options; the plan and the report are its result. Raises
    RecoveryError (in the API's words) when the recovery is refused or a part failed."""
    from casbackup.recovery.execute import recover
    from casbackup.recovery.plan import RecoverOptions

    p = job.params
    app = job.config.app(job.app or "")
    options = RecoverOptions(
        app=job.app or "", target=p["target"], snapshot=p.get("snapshot"),
        databases=bool(p.get("databases", True)), dry_run=bool(p.get("dry_run")),
        allow_unverified=bool(p.get("allow_unverified")), name_apps=False,
        overwrite_databases=bool(p.get("overwrite_databases")),
        globals=bool(p.get("globals", True)), report=p.get("report"),
        # The request's db_into, confined: no password source and no file outside the target
        # that the config does not name (connection.confined_spec).
        db_into={str(k): str(v) for k, v in (p.get("db_into") or {}).items()}, confined=True,
        # Where the server databases go and where their passwords come from: the config's
        # definitions, as `casbackup recover` takes them (never the snapshot's).
        configured={d.name: d for d in app.databases} if app is not None else {},
        configured_sources=tuple(app.sources) if app is not None else (),
    )  # fmt: skip
    with job.locked(command="serve: recover"):
        try:
            result = recover(job.repo, options, job.reporter)
        except UnverifiedSnapshot as exc:  # what to do, in the API's words, not the CLI's
            raise RecoveryError(
                f"{exc.reason}: verify snapshot {exc.snapshot} first, name a verified one in "
                "'snapshot', or set 'allow_unverified'"
            ) from None
        except (RecoveryError, UsageError) as exc:  # the CLI's flags in it: the API's fields
            text = str(exc)
            for flag, api in _RECOVER_FIELDS.items():
                text = text.replace(flag, api)
            if text == str(exc):
                raise
            raise exc.saying(text) from None
    plan = result.plan
    doc: dict[str, Any] = {
        "dry_run": options.dry_run,
        "plan": recovery_plan_doc(plan),
        "report": result.report, "report_files": list(result.report_files or ()),
        "errors": result.errors,
    }  # fmt: skip
    if result.errors:
        emit({"t": "partial_result", "result": doc})
    result.raise_if_failed()
    return doc
