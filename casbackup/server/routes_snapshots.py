"""Snapshots: list, detail, tree browsing, file and folder download (through casbackup/vfs),
and the jobs that act on one snapshot (restore, verify)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from casbackup.archiver.export import archive_stream, tree_members
from casbackup.catalog import snapshot_doc, verification_doc
from casbackup.errors import AmbiguousId, NotFound
from casbackup.maintenance.tags import TagChange
from casbackup.nstime import iso_ns
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import NodeKind
from casbackup.server.auth import Principal, require, service_of
from casbackup.server.body import Body
from casbackup.server.repos import RepoHandle
from casbackup.server.routes_jobs import JobStarted, job_started, recovery_target
from casbackup.text import storable

router = APIRouter(tags=["snapshots"])

BLOCK = 1 << 20  # download read size: one chunk-sized read at a time keeps memory flat
KIND_NAMES = {NodeKind.FILE: "file", NodeKind.DIR: "dir", NodeKind.SYMLINK: "symlink",
              NodeKind.FIFO: "fifo", NodeKind.CHARDEV: "chardev", NodeKind.BLOCKDEV: "blockdev",
              NodeKind.SOCKET: "socket"}  # fmt: skip


class Summary(BaseModel):
    files_new: int
    files_changed: int
    files_unchanged: int
    dirs: int
    files_total: int
    bytes_total: int
    bytes_read: int
    bytes_added: int
    bytes_stored: int
    blobs_added: int
    errors: int
    duration_s: float


class Verification(BaseModel):
    ok: bool
    time: str
    record: str


class SnapshotOut(BaseModel):
    id: str
    short_id: str
    repository: str
    time: str
    app: str | None
    type: str
    host: str
    paths: list[str]
    tags: list[str]
    parent: str | None
    # the id it was first saved under, when `tag` rewrote its record (verification records
    # name it); null for a record as its backup wrote it
    original: str | None = None
    revision: int = 0
    summary: Summary
    protected_bytes: int  # files' plus database dumps' sizes
    verification: Verification | None


class VerificationRecordOut(BaseModel):
    id: str
    ok: bool
    time: str
    duration_s: float
    files_checked: int
    bytes_checked: int
    failures: list[dict[str, Any]]
    databases: list[dict[str, Any]]
    warnings: list[str]


class SnapshotDetail(SnapshotOut):
    databases: list[dict[str, Any]]
    excludes: list[str]
    base_full: str | None
    errors: list[str] = Field(description="files that could not be read during the backup")
    verifications: list[VerificationRecordOut]


B64_DOC = (
    "the path's exact bytes, URL-safe base64 (RFC 4648 section 5, padded); only present when "
    "the path is not valid UTF-8 (name and path then show U+FFFD for the odd bytes). Pass it "
    "back as the path_b64 parameter of tree and download to reach that entry."
)


class TreeEntry(BaseModel):
    name: str = Field(description="the name for display (invalid UTF-8 bytes as U+FFFD)")
    path: str = Field(description="the path for display; use it as `path` when path_b64 is null")
    path_b64: str | None = Field(None, description=B64_DOC)
    type: str = Field(description="file | dir | symlink | fifo | chardev | blockdev | socket")
    size: int
    mode: str = Field(description="permission bits, octal")
    mtime: str
    uid: int
    gid: int
    user: str
    group: str
    link_target: str | None = None


class TreeListing(BaseModel):
    snapshot_id: str
    path: str
    path_b64: str | None = Field(None, description=B64_DOC)
    entries: list[TreeEntry]
    total: int
    offset: int


class TagRequest(Body):
    add: list[str] = Field([], max_length=50, description="tags to add")
    remove: list[str] = Field([], max_length=50, description="tags to remove")
    set: list[str] | None = Field(
        None, max_length=50, description="replace every tag with these ([] removes them all); "
        "not with add or remove",
    )  # fmt: skip


class RestoreRequest(Body):
    path: str | None = Field(
        None, max_length=4096, description="folder or file inside the snapshot (default '/')"
    )
    path_b64: str | None = Field(
        None, max_length=5464,  # 4096 bytes
        description="instead of `path`: the path's exact bytes in URL-safe base64 (as `path_b64` "
        "of a listing entry), for names that are not valid UTF-8",
    )  # fmt: skip
    target: str | None = Field(None, max_length=200,
                               description="folder name inside the recovery directory")  # fmt: skip
    overwrite: bool = False
    in_place: bool = Field(False, description="restore to the original place instead (admins: "
                           "it writes outside the recovery directory); target is then ignored")  # fmt: skip


def _doc(handle: RepoHandle, snap: Snapshot, verified: dict[str, Any]) -> dict[str, Any]:
    base = handle.docs.get(snap.id)
    if base is None:  # built once per snapshot (asdict is the slow part of a long list)
        base = snapshot_doc(snap)
        base["repository"] = handle.key
        handle.docs[snap.id] = base
    d = dict(base)
    d["verification"] = verification_doc(verified.get(snap.identity))
    return d


def _handles(request: Request, repository: str | None) -> list[RepoHandle]:
    registry = service_of(request).registry
    if repository is not None:
        return [registry.handle(repository)]
    return [h for h in registry.handles.values() if h.location]


def find_snapshot(
    request: Request, principal: Principal, ref: str, app: str | None = None
) -> tuple[RepoHandle, Snapshot]:
    """A snapshot by id, unique prefix or 'latest' (with ``app``) across the repositories;
    one the caller may not see answers 404 exactly like a missing one."""
    if app is not None:
        principal.check_app(app)
    found: list[tuple[RepoHandle, Snapshot]] = []
    registry = service_of(request).registry
    handles = (
        [registry.handle(registry.repo_key_for(app))]
        if ref == "latest"
        else _handles(request, None)
    )
    for handle in handles:
        try:
            snap = handle.repo().resolve_snapshot(ref, app=app)
        except NotFound:
            continue
        found.append((handle, snap))
    if len(found) > 1:
        raise AmbiguousId(
            f"{ref!r} matches snapshots in {len(found)} repositories; give more digits"
        )
    if not found or not principal.sees(found[0][1].app):
        raise HTTPException(404, f"no snapshot matches {ref!r}")
    request.state.audit_app = found[0][1].app
    return found[0]


@router.get("/api/snapshots", response_model=list[SnapshotOut])
def list_snapshots(
    request: Request,
    app: str | None = Query(None, max_length=100),
    tag: list[str] = Query([], max_length=20),
    since: dt.datetime | None = Query(None, description="only snapshots at or after (ISO 8601)"),
    until: dt.datetime | None = Query(None, description="only snapshots before (ISO 8601)"),
    repository: str | None = Query(None, max_length=120),
    principal: Principal = Depends(require("view")),
) -> Response:
    """Oldest first, as `casbackup snapshots --json`."""
    out: list[dict[str, Any]] = []
    for handle in _handles(request, repository):
        warnings: list[str] = []
        snaps = handle.snapshots(warnings)
        records = handle.records()
        verified = records.latest_by_snapshot()
        for s in snaps:
            if (
                (app is not None and s.app != app)
                or not principal.sees(s.app)
                or (principal.apps is not None and s.app is None)
            ):
                continue
            if tag and not set(tag) <= set(s.tags):
                continue
            when = s.datetime
            if (since and when < _aware(since)) or (until and when >= _aware(until)):
                continue
            out.append(_doc(handle, s, verified))
    return fast_json(out)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()  # ASCII: odd names cannot break it


def fast_json(doc: Any) -> Response:
    return Response(_dumps(doc), media_type="application/json")


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@router.get("/api/snapshots/{snapshot_id}", response_model=SnapshotDetail)
def snapshot_detail(snapshot_id: str, request: Request, app: str | None = Query(None, max_length=100),
                    principal: Principal = Depends(require("view"))) -> dict[str, Any]:  # fmt: skip
    """One snapshot (id, unique prefix, or 'latest' with ``app``): file counts, databases and
    every verification of it, newest first."""
    handle, snap = find_snapshot(request, principal, snapshot_id, app)
    # records() lists them oldest first as every reader orders them (records.sort_records)
    records = [r for r in handle.records().records if r.snapshot_id == snap.identity][::-1]
    doc = _doc(handle, snap, {snap.id: records[0]} if records else {})
    doc["verification"] = verification_doc(records[0]) if records else None
    doc["verifications"] = [r.to_dict() for r in records]
    return doc


def _clean_path(path: str) -> str:
    """An absolute path inside a snapshot; '..' is refused outright (never resolved)."""
    if "\0" in path or len(path) > 4096:
        raise HTTPException(400, "invalid path")
    parts = [p for p in path.split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise HTTPException(400, "'..' is not allowed in snapshot paths")
    return "/" + "/".join(parts)


PATH_B64_QUERY = Query(
    None, max_length=5464,  # 4096 bytes
    description="instead of `path`: the path's exact bytes in URL-safe base64 (as `path_b64` "
    "of a listing entry), for names that are not valid UTF-8",
)  # fmt: skip


def _request_path(path: str | None, path_b64: str | None) -> str:
    """The snapshot path a request names, as a str (non-UTF-8 bytes surrogate-escaped, as
    casbackup/vfs takes them), checked by ``_clean_path``. Raises 400 for both or bad base64."""
    if path_b64 is None:
        return _clean_path(path if path is not None else "/")
    if path is not None:
        raise HTTPException(400, "give path or path_b64, not both")
    try:
        raw = base64.urlsafe_b64decode(path_b64.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise HTTPException(400, "path_b64 is not URL-safe base64") from None
    if base64.urlsafe_b64encode(raw).decode() != path_b64:
        raise HTTPException(400, "path_b64 is not URL-safe base64 (padded)")
    return _clean_path(os.fsdecode(raw))


def _display(text: str) -> str:
    """Surrogate-escaped bytes (not UTF-8) as U+FFFD: what JSON and headers can carry, for
    a name shown beside its exact bytes (``path_b64``). Messages name a path with
    ``storable`` instead (``\\xNN`` for such bytes), as a job's params do: a reader can tell
    which name it was."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _path_b64(path: str) -> str | None:
    """URL-safe base64 of a path's bytes, or None when the path is valid UTF-8."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return base64.urlsafe_b64encode(raw).decode()


def _entry_doc(entry: Any, inner: str) -> dict[str, Any]:
    n = entry.node
    raw_name = os.fsdecode(n.name)
    full = (inner.rstrip("/") + "/" + raw_name) if inner != "/" else "/" + raw_name
    return {
        "name": _display(raw_name), "path": _display(full), "path_b64": _path_b64(full),
        "type": KIND_NAMES.get(n.kind, "unknown"),
        "size": n.size if n.kind != NodeKind.SYMLINK else len(n.link_target),
        "mode": oct(n.mode & 0o7777), "mtime": _ns(n.mtime_ns), "uid": n.uid, "gid": n.gid,
        "user": n.user, "group": getattr(n, "group", ""),
        "link_target": n.link_target.decode("utf-8", "replace") if n.kind == NodeKind.SYMLINK else None,
    }  # fmt: skip


def _ns(ns: int) -> str:
    # Exact (integers, never a float), any i64 seconds: '@<s>.<ns>' outside years 1..9999.
    return iso_ns(ns, local=False)


def _vfs_path(handle: RepoHandle, snap: Snapshot, inner: str) -> str:
    return handle.vfs().snapshot_path(snap.id) + (inner if inner != "/" else "")


@router.get("/api/snapshots/{snapshot_id}/tree", response_model=TreeListing)
def browse(
    snapshot_id: str,
    request: Request,
    path: str | None = Query(None, max_length=4096, description="default '/'"),
    path_b64: str | None = PATH_B64_QUERY,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(10_000, ge=1, le=100_000),
    app: str | None = Query(None, max_length=100),
    principal: Principal = Depends(require("browse")),
) -> Response:
    """Names and metadata of one folder of a snapshot (no contents)."""
    inner = _request_path(path, path_b64)
    handle, snap = find_snapshot(request, principal, snapshot_id, app)
    key = (snap.id, inner, offset, limit)
    body = handle.listings.get(key)
    if body is None:
        vfs = handle.vfs()
        try:
            entries = vfs.listdir(_vfs_path(handle, snap, inner))
        except NotFound as exc:
            raise HTTPException(404, f"{storable(inner)}: {exc}") from None
        page = entries[offset : offset + limit]
        doc = {"snapshot_id": snap.id, "path": _display(inner), "path_b64": _path_b64(inner), "entries": [_entry_doc(e, inner) for e in page],
               "total": len(entries), "offset": offset}  # fmt: skip
        # Built to the schema's shape and returned as is: validating 10,000 entries again
        # through the response model doubled the time of a big folder (bench/server_api.py).
        body = _dumps(doc)
        handle.listings.put(key, body)
    return Response(body, media_type="application/json")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> (start, end exclusive); None: send everything. Raises 416."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None  # other units or several ranges: a full 200 answer is allowed
    first, sep, last = spec.strip().partition("-")
    try:
        if not sep:
            raise ValueError
        if first == "":
            n = int(last)
            if n <= 0:
                raise ValueError
            start, end = max(size - n, 0), size
        else:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
            if int(first) < 0 or (last and int(last) < start):
                raise ValueError
    except ValueError:
        raise HTTPException(416, "invalid range", {"Content-Range": f"bytes */{size}"}) from None
    if start >= size:
        raise HTTPException(416, "range starts past the end", {"Content-Range": f"bytes */{size}"})
    return start, end


def _disposition(name: str) -> str:
    """A Content-Disposition value for a stored name (untrusted: any byte but / and NUL).

    RFC 6266: ``filename`` is a quoted string of printable ASCII (a control character such as
    a newline in a header is refused by the HTTP server, which reset the connection), so
    everything else there becomes ``_``; ``filename*`` (RFC 8187) carries the exact name,
    percent-encoded."""
    name = _display(name)  # a header cannot carry bytes that are not UTF-8
    ascii_name = (
        "".join(c if " " <= c <= "~" and c not in '"\\?' else "_" for c in name) or "download"
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get(
    "/api/snapshots/{snapshot_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {},
                                 "application/zip": {}}},
               206: {"description": "the requested byte range"}, 416: {"description": "bad range"}},
)  # fmt: skip
def download(
    snapshot_id: str,
    request: Request,
    path: str | None = Query(None, max_length=4096, description="required unless path_b64"),
    path_b64: str | None = PATH_B64_QUERY,
    app: str | None = Query(None, max_length=100),
    range_header: str | None = Header(None, alias="Range", max_length=200),
    archive: Literal["tar", "zip"] = Query(
        "tar", alias="format", description="a folder's archive format (files ignore it)"
    ),
    principal: Principal = Depends(require("download")),
) -> StreamingResponse:
    """A file's contents (Content-Length, ``Range`` for resuming), or a folder as one tar
    (default) or zip (``format=zip``) stream. Only the chunks a read covers are fetched and
    decrypted; memory stays flat for any size."""
    if path is None and path_b64 is None:
        raise HTTPException(400, "give path or path_b64")
    inner = _request_path(path, path_b64)
    handle, snap = find_snapshot(request, principal, snapshot_id, app)
    vfs = handle.vfs()
    full = _vfs_path(handle, snap, inner)
    try:
        entry = vfs.lookup(full)
    except NotFound as exc:
        raise HTTPException(404, f"{storable(inner)}: {exc}") from None
    name = entry.name if inner != "/" else f"snapshot-{snap.short_id}"
    if entry.kind == NodeKind.DIR:
        media = "application/zip" if archive == "zip" else "application/x-tar"
        return StreamingResponse(
            # Read per pack in batches, ahead of the sending (export.tree_members): one get
            # per chunk through the VFS cost an object store a round trip each.
            archive_stream(archive, tree_members(vfs.repo, entry.node, name)), media_type=media,
            headers={"Content-Disposition": _disposition(f"{name}.{archive}")},
        )  # fmt: skip
    if entry.kind != NodeKind.FILE:
        raise HTTPException(
            400, f"{storable(inner)} is a {KIND_NAMES.get(entry.kind)}, not a file or folder"
        )
    size = entry.node.size
    span = _parse_range(range_header, size)
    start, end = span or (0, size)
    opened = vfs.open(full)
    headers = {"Content-Length": str(end - start), "Accept-Ranges": "bytes",
               "Content-Disposition": _disposition(name)}  # fmt: skip
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(_file_stream(opened, start, end), status_code=206 if span else 200,
                             media_type="application/octet-stream", headers=headers)  # fmt: skip


def _file_stream(opened: Any, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        data = opened.read(pos, min(BLOCK, end - pos))
        if not data:
            return
        pos += len(data)
        yield data


@router.post("/api/snapshots/{snapshot_id}/restore", response_model=JobStarted, status_code=202)
def restore(snapshot_id: str, body: RestoreRequest, request: Request,
            principal: Principal = Depends(require("restore"))) -> JobStarted:  # fmt: skip
    """Restore the snapshot, or a folder or file of it, into a folder of the configured recovery
    directory (``disaster_recovery.recovery_directory``), or with ``in_place`` (admins only)
    back where it was backed up from. The path is ``path`` or, for a name that is not UTF-8,
    ``path_b64`` (as tree and download take them; 400 for both or bad base64)."""
    inner = _request_path(body.path, body.path_b64)
    handle, snap = find_snapshot(request, principal, snapshot_id)
    if body.in_place:
        principal.check("recover", snap.app)
        try:
            kind = handle.vfs().lookup(_vfs_path(handle, snap, inner)).kind
        except NotFound as exc:
            raise HTTPException(404, f"{storable(inner)}: {exc}") from None
        # a folder's contents go into that folder; a file goes into its parent folder
        target = inner if kind == NodeKind.DIR else os.path.dirname(inner)
    else:
        target = recovery_target(
            request, snap.app or "restore", body.target or f"restore-{snap.short_id}"
        )
    doc = service_of(request).jobs.submit(
        "restore", app=snap.app, repo_key=handle.key, created_by=principal.actor,
        user_id=principal.user_id,
        params={"snapshot": snap.id, "path": inner, "target": target, "overwrite": body.overwrite},
    )  # fmt: skip
    return job_started(doc, f"restore of {snap.short_id}:{storable(inner)} queued")


@router.post("/api/snapshots/{snapshot_id}/tags", response_model=JobStarted, status_code=202)
def change_tags(snapshot_id: str, body: TagRequest, request: Request,
                principal: Principal = Depends(require("tag"))) -> JobStarted:  # fmt: skip
    """Change the snapshot's tags (`casbackup tag`): a tag named in an application's
    `retention.keep_tags` pins the snapshot. The snapshot gets a new id (the job's result
    names it); its old id still finds it and its verification state stays. 400 for a
    request that asks for nothing, mixes `set` with add/remove, or names an unusable tag."""
    TagChange(add=tuple(body.add), remove=tuple(body.remove),
              set_to=None if body.set is None else tuple(body.set))  # fmt: skip
    handle, snap = find_snapshot(request, principal, snapshot_id)
    doc = service_of(request).jobs.submit(
        "tag", app=snap.app, repo_key=handle.key, created_by=principal.actor,
        user_id=principal.user_id,
        params={"snapshot": snap.id, "add": body.add, "remove": body.remove, "set": body.set},
    )  # fmt: skip
    return job_started(doc, f"tag change of {snap.short_id} queued")


@router.post("/api/snapshots/{snapshot_id}/verify", response_model=JobStarted, status_code=202)
def verify(
    snapshot_id: str, request: Request, principal: Principal = Depends(require("verify"))
) -> JobStarted:
    """Restore into a sandbox, re-hash every file, load every dump; the record is stored in the
    repository (shown by the snapshot's detail)."""
    handle, snap = find_snapshot(request, principal, snapshot_id)
    # One waiting verification of a snapshot is enough: more queued the same hours-long
    # restore drill again and again (clicks, scripts), holding up every later job.
    doc, new = service_of(request).jobs.submit_once(
        "verify", app=snap.app, repo_key=handle.key, created_by=principal.actor,
        user_id=principal.user_id, params={"snapshot": snap.id},
    )  # fmt: skip
    what = f"verification of {snap.short_id}"
    return job_started(doc, f"{what} queued" if new else
                       f"{what} is already waiting to run (job {doc['id']})")  # fmt: skip
