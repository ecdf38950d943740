"""Every ``data-testid`` the dashboard's templates use, in one place.

Browser tests find elements by these names only (never by text or layout), so a template may
change its markup freely as long as it keeps these. Templates write ``data-testid="{{ T.x }}"``
(``T`` is this mapping); names that carry a value (an application, a path) add it after a
colon, e.g. ``app-row:shop``. ``tests/server/test_dashboard.py`` checks that every name here
appears in some template and that templates use no other.
"""

from __future__ import annotations

TESTIDS: dict[str, str] = {
    # layout and login
    "nav": "nav",
    "nav_user": "nav-user",
    "logout": "logout",
    "login_form": "login-form",
    "login_user": "login-user",
    "login_password": "login-password",
    "login_submit": "login-submit",
    "form_error": "form-error",
    "error_message": "error-message",
    # overview
    "app_row": "app-row",  # :<app>
    "app_link": "app-link",  # :<app>
    "last_backup": "last-backup",  # :<app>
    "verify_badge": "verify-badge",  # :<app>; class ok | bad
    "overdue": "overdue",  # :<app>
    "strip": "strip",  # :<app>
    "repo_health": "repo-health",  # :<repository>
    "repo_alert": "repo-alert",  # :<repository>, one per rollback / tampering alert
    "repo_check": "repo-check",  # :<repository>
    "repo_prune": "repo-prune",  # :<repository>
    # application page
    "backup_form": "backup-form",
    "backup_type": "backup-type",
    "backup_button": "backup-button",
    "forget_preview": "forget-preview",
    "rewrite_form": "rewrite-form",  # the app page's preview of taking files out
    "rewrite_patterns": "rewrite-patterns",
    "rewrite_button": "rewrite-button",  # on a preview's job page: do it
    "rewrite_prune": "rewrite-prune",  # after it: preview the prune that frees the data
    "rewrite_result": "rewrite-result",  # :<old snapshot id, 8 digits>
    "snapshot_row": "snapshot-row",  # :<short id>
    "snapshot_link": "snapshot-link",  # :<short id>
    "verify_button": "verify-button",  # :<short id>
    "snapshot_badge": "snapshot-badge",  # :<short id>
    "snapshot_partial": "snapshot-partial",  # :<short id> on the app page; bare on a snapshot's
    "chart": "chart",
    # snapshot browser
    "breadcrumb": "breadcrumb",
    "entry": "entry",  # :<name>
    "entry_link": "entry-link",  # :<name>
    "download": "download",  # :<name>
    "restore_form": "restore-form",  # :<path>
    "tag_form": "tag-form",
    "tag_input": "tag-input",
    "tag_result": "tag-result",
    "restore_target": "restore-target",
    "restore_overwrite": "restore-overwrite",
    "restore_in_place": "restore-in-place",
    "restore_button": "restore-button",
    "diff_form": "diff-form",
    "diff_result": "diff-result",
    "file_meta": "file-meta",
    # jobs
    "job_row": "job-row",  # :<id>
    "jobs_older": "jobs-older",  # the jobs page's link to the next older page
    "job_state": "job-state",  # :<id>
    "job_progress": "job-progress",  # :<id>
    "job_rate": "job-rate",  # :<id>; rate and time left, from the event stream
    "job_cancel": "job-cancel",
    "job_log": "job-log",
    "job_result": "job-result",
    "job_run_plan": "job-run-plan",
    "check_affected": "check-affected",  # :<snapshot id, 8 digits>
    "check_repair_hint": "check-repair-hint",
    "app_damage": "app-damage",  # :<app>; the last check found its snapshots damaged
    "repair_button": "repair-button",  # :packs | :snapshots
    "repair_preview": "repair-preview",  # :packs | :snapshots (a dry run)
    # disaster recovery
    "drill_cut": "drill-cut",  # :<app>; its newest verify job did not finish
    "recover_form": "recover-form",
    "recover_app": "recover-app",
    "recover_plan_button": "recover-plan-button",
    "recover_db_into": "recover-db-into",
    "recover_in_place": "recover-in-place",
    "recovery_report": "recovery-report",
    # admin
    "user_row": "user-row",  # :<name>
    "user_role": "user-role",  # :<name>, the form that changes a role
    "user_form": "user-form",
    "token_form": "token-form",
    "token_shown": "token-shown",
    "token_row": "token-row",  # :<id>
    "audit_row": "audit-row",
    "audit_filter": "audit-filter",
}
