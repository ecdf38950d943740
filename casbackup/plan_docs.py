"""JSON documents of the plans of destructive or long operations (forget, prune, recover).

`casbackup forget|prune|recover --json` prints them and the web service returns them as job
results, so both faces show a plan field for field the same way. Pure: no repository access.
"""

from __future__ import annotations

from datetime import timedelta

from casbackup.maintenance.forget import ForgetPlan
from casbackup.maintenance.prune import PrunePlan
from casbackup.maintenance.retention import RetentionPolicy, format_duration
from casbackup.recovery.plan import RecoveryPlan


def policy_doc(policy: RetentionPolicy) -> dict[str, object]:
    doc: dict[str, object] = {
        k: format_duration(v) if isinstance(v, timedelta) else v
        for k, v in vars(policy).items()
        if (v or isinstance(v, timedelta)) and k != "keep_tags"
    }
    if policy.keep_tags:
        doc["keep_tags"] = sorted(policy.keep_tags)
    return doc


def forget_plan_doc(plan: ForgetPlan) -> list[dict[str, object]]:
    def entry(v):  # type: ignore[no-untyped-def]
        return {"id": v.snapshot.id, "short_id": v.snapshot.short_id, "time": v.snapshot.time,
                "reasons": list(v.reasons)}  # fmt: skip

    return [
        {"group": str(g.key), "app": g.key.app, "host": g.key.host, "paths": list(g.key.paths),
         "policy": None if g.policy is None else policy_doc(g.policy),
         "keep": [entry(v) for v in g.verdicts if v.keep],
         "remove": [entry(v) for v in g.verdicts if not v.keep]}
        for g in plan.groups
    ]  # fmt: skip


def prune_plan_doc(plan: PrunePlan, pack_size: int) -> dict[str, object]:
    return {
        "snapshots": plan.snapshots, "used_blobs": plan.used_blobs, "packs_total": plan.packs_total,
        "bytes_total": plan.bytes_total, "packs_keep": len(plan.keep), "packs_repack": len(plan.repack),
        "packs_delete": len(plan.delete), "packs_unindexed": len(plan.unindexed),
        "packs_unindexed_recent": plan.unindexed_young, "index_files": len(plan.old_index_files),
        "rewrite_index": plan.rewrite_index, "temp_files": len(plan.temp_files),
        "missing_packs": list(plan.missing_packs), "duplicate_blobs": plan.duplicate_blobs,
        "bytes_deleted": plan.bytes_deleted, "bytes_rewritten": plan.bytes_rewritten,
        "unused_bytes_kept": plan.unused_bytes_kept, "bytes_freed": plan.bytes_freed(pack_size),
        "repack": [u.pack for u in plan.repack], "delete": [u.pack for u in plan.delete],
    }  # fmt: skip


def recovery_plan_doc(plan: RecoveryPlan) -> dict[str, object]:
    return {
        "app": plan.app, "snapshot": plan.snapshot.id, "target": plan.target,
        "verification": plan.verification.id if plan.verification else None,
        "verified": bool(plan.verification and plan.verification.ok),
        # done_by: the start of the earlier run that recovered the part whole ("" when
        # none did): a rerun leaves it as it is
        "files": [{"source": f.source, "target": f.target, "kind": f.kind, "files": f.files,
                   "bytes": f.bytes, "done_by": f.done_by} for f in plan.files],
        "databases": [{"name": d.record.name, "engine": d.spec.engine, "target": d.where,
                       "stored_location": d.stored, "dump_size": d.record.size,
                       "overwrite": d.overwrite and not d.done_by,
                       "tables": len(d.record.row_counts), "done_by": d.done_by}
                      for d in plan.databases],
        "warnings": list(plan.warnings), "problems": list(plan.problems),
        "fallback": plan.fallback,
    }  # fmt: skip
