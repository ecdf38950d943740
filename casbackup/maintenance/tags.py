"""``tag``: change the tags of snapshots after the backup (restic's ``tag`` command).

A snapshot record is content-addressed (its id is the hash of its stored bytes), so a tag
change writes a new record and deletes the old one, as restic does. The new record keeps
every field and adds ``original`` (the id the snapshot was first saved under, which
verification records and check results name) and ``revision`` (one more than the old
record's). The order is crash-safe: the new record is stored before the old one is deleted;
killed in between, both are present, and every listing takes the higher revision as the
snapshot (repo/snapshot.py ``split_rewrites``); the next ``tag`` deletes the left-over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from casbackup.errors import CasError, MigrationRequired, NotFound, UsageError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, check_tags, split_rewrites


@dataclass(frozen=True)
class TagChange:
    """What to do to each snapshot's tags: replace them all (``set_to``, may be empty to
    clear them), or add and remove. Raises UsageError when it asks for nothing or mixes
    ``set_to`` with add/remove (restic refuses the same), or a tag is not usable."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    set_to: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.set_to is None and not self.add and not self.remove:
            raise UsageError("give tags to --add, --remove or --set (--set '' clears them)")
        if self.set_to is not None and (self.add or self.remove):
            raise UsageError("--set replaces every tag: use it without --add and --remove")
        check_tags(self.add)
        check_tags(self.remove)
        if self.set_to is not None:
            check_tags(self.set_to)

    def apply(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        """The new tags: order kept, each once, added ones after the kept ones."""
        if self.set_to is not None:
            return tuple(dict.fromkeys(self.set_to))
        out = [t for t in dict.fromkeys(tags) if t not in self.remove]
        out += [t for t in dict.fromkeys(self.add) if t not in out]
        return tuple(out)


@dataclass
class TagResult:
    changed: list[tuple[Snapshot, Snapshot]] = field(default_factory=list)  # (old, new)
    unchanged: list[Snapshot] = field(default_factory=list)
    leftovers_removed: list[str] = field(default_factory=list)  # record ids


def rewrite_snapshot(repo: Repository, snap: Snapshot, tags: tuple[str, ...]) -> Snapshot:
    """Store ``snap`` with ``tags`` as a new record, then delete the old record.

    Returns the new snapshot (new id, same identity). The caller holds the exclusive lock.
    A NotFound from the delete (another client removed the old record in between) is fine:
    the new record is the snapshot either way."""
    new = replace(snap, tags=tags, original=snap.identity, revision=snap.revision + 1, id="")
    return new.with_id(repo.replace_snapshot(snap.id, new))


def change_tags(
    repo: Repository,
    refs: Sequence[str],
    change: TagChange,
    *,
    app: str | None = None,
    dry_run: bool = False,
) -> TagResult:
    """Apply ``change`` to the snapshots ``refs`` names (ids, unique prefixes, or 'latest'
    of ``app``). The caller holds the exclusive lock (two tag changes of one snapshot at
    once would each keep a record). Records left over by an interrupted tag change of these
    snapshots are deleted first. Raises NotFound/AmbiguousId for a bad ref, UsageError."""
    if not refs:
        raise UsageError("name the snapshots to tag (ids, or 'latest' with --app)")
    if not dry_run and not repo.rewritten_records_allowed:
        repo.require_writable()
        raise MigrationRequired(
            f"changing tags after the backup needs repository format version 5 (this one is "
            f"version {repo.config.version}): run 'casbackup migrate' first (older casbackup "
            "versions cannot open the repository afterwards)"
        )
    chosen: dict[str, Snapshot] = {}
    for ref in refs:
        snap = repo.resolve_snapshot(ref, app=app)
        if app is not None and snap.app != app:
            raise NotFound(f"snapshot {snap.short_id} is not a snapshot of application {app!r}")
        chosen.setdefault(snap.identity, snap)
    result = TagResult()
    every: list[Snapshot] = []
    for fid in repo.usable_snapshot_ids():
        try:
            every.append(repo.load_snapshot(fid))
        except CasError:  # an unreadable record is forget's and check's to report
            continue
    kept, leftovers = split_rewrites(every)
    current = {s.identity: s for s in kept}
    # Every ref checked before anything changes (a bad third one tags nothing). A ref may
    # name a left-over record: the snapshot is its newest record. One this client forgot
    # (back after a rollback) is not tagged back to life.
    for snap in chosen.values():
        if snap.identity not in current:
            raise NotFound(f"snapshot {snap.short_id} is not among the repository's snapshots")
    for snap in (current[identity] for identity in chosen):
        for old, newer in leftovers:
            if newer.identity == snap.identity:
                if not dry_run:
                    try:
                        repo.delete_snapshot(old.id)
                    except NotFound:
                        pass
                result.leftovers_removed.append(old.id)
        tags = change.apply(snap.tags)
        if tags == snap.tags:
            result.unchanged.append(snap)
        elif dry_run:
            result.changed.append((snap, replace(snap, tags=tags)))
        else:
            result.changed.append((snap, rewrite_snapshot(repo, snap, tags)))
    return result


__all__ = ["TagChange", "TagResult", "change_tags", "rewrite_snapshot"]
