"""The recovery report: one JSON document for machines and the same facts as Markdown for people.

Written next to each other (`FILE.json`, `FILE.md`; by default `recovery-report.*` in the target)
after every recovery that got past planning, also when a part of it failed: the report is how
the operator learns what is and is not back.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from casbackup.units import human_bytes, plural

REPORT_VERSION = 1


def report_paths(base: str) -> tuple[str, str]:
    """FILE -> (FILE.json, FILE.md); a given .json/.md suffix is not doubled."""
    root, ext = os.path.splitext(base)
    if ext.lower() in (".json", ".md"):
        base = root
    return base + ".json", base + ".md"


def write_report(doc: dict[str, Any], base: str) -> tuple[str, str]:
    """Write both reports, each atomically (a reader never sees half of one), 0600.

    Each goes to a temp file of a random name in the report's folder, created with
    O_EXCL|O_NOFOLLOW (a symlink or file planted under a predictable name is never
    followed nor overwritten), fsynced, then renamed over the final name (which replaces
    a planted symlink itself, never its target). Raises OSError (and leaves no JSON
    without its Markdown).
    """
    json_path, md_path = report_paths(base)
    folder = os.path.dirname(os.path.abspath(json_path))
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    write_atomically(json_path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    try:
        write_atomically(md_path, render_markdown(doc).encode("utf-8"))
    except OSError:
        # Both or neither: a lone JSON would outlive the fallback report that says why
        # the pair could not be written here.
        try:
            os.unlink(json_path)
        except OSError:
            pass
        raise
    return json_path, md_path


def write_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` through a fresh temp name (O_EXCL|O_NOFOLLOW), fsynced, then
    renamed over `path`; mode 0600. Raises OSError (leaving no temp file)."""
    tmp = f"{path}.tmp-{os.urandom(6).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def render_markdown(doc: dict[str, Any]) -> str:
    snap = doc["snapshot"]
    ver = doc.get("verification")
    status = "**SUCCEEDED**" if doc["ok"] else "**FAILED**"
    lines = [
        f"# Recovery of {doc['app']}: {status}",
        "",
        f"- Snapshot: `{snap['id'][:8]}` taken {snap['time']} on {snap['host']} ({snap['type']})",
        "- Verification: " + (
            f"{'passed' if ver['ok'] else 'FAILED'} on {ver['time']} on {ver['host']} "
            f"({plural(ver['files_checked'], 'file')}, {human_bytes(ver['bytes_checked'])})"
            if ver else "none (recovered from an unverified snapshot)"
        ),
        f"- Target: `{doc['target']}`",
        f"- Started {doc['started']}, took {doc['duration_s']:.1f} s on {doc['host']}",
        f"- Re-check before restore: {plural(doc['recheck']['files'], 'file')}, "
        f"{human_bytes(doc['recheck']['bytes'])}, {plural(len(doc['recheck']['problems']), 'problem')}",
        "",
        "## Files",
        "",
    ]  # fmt: skip
    if doc["files"]:
        lines += [
            "| Source | Restored to | Files | Size | Tree | Errors |",
            "|---|---|---:|---:|---|---:|",
        ]
        for f in doc["files"]:
            lines.append(
                f"| `{f['source']}` | `{f['target']}` | {f['files']} | {human_bytes(f['bytes'])} "
                f"| `{(f.get('tree') or '')[:16]}` | {len(f['errors'])} |"
            )
    else:
        lines.append("No files were restored.")
    lines += ["", "## Databases", ""]
    if doc["databases"]:
        lines += ["| Database | Engine | Restored into | Dump size | Dump BLAKE3 | Tables | Rows | Result |",
                  "|---|---|---|---:|---|---:|---:|---|"]  # fmt: skip
        for d in doc["databases"]:
            result = "ok" if d["ok"] else f"FAILED: {d['error']}"
            rows = sum(d["row_counts"].values())
            lines.append(
                f"| {d['name']} | {d['engine']} | `{d['target']}` | {human_bytes(d['dump_size'])} "
                f"| `{d['dump_blake3'][:16]}` | {len(d['row_counts'])} | {rows} | {result} |"
            )
        # What was applied before the loads: roles (PostgreSQL) and accounts (MariaDB)
        # created from the backup, and those the server had already.
        created = [note for d in doc["databases"] for note in d.get("globals") or []]
        lines += ([""] + [f"- {note}" for note in created]) if created else []
    else:
        lines.append("No databases were restored.")
    left = [p for p in (*doc["files"], *doc["databases"]) if p.get("left_as_is")]
    if left:
        lines += ["", "## Left as an earlier run recovered them", ""]
        lines += [f"- `{p['target']}`: {p['left_as_is']}" for p in left]
    for title, key in (("Errors", "errors"), ("Warnings", "warnings")):
        if doc[key]:
            lines += ["", f"## {title}", ""] + [f"- {m}" for m in doc[key]]
    manifest = doc["recheck"].get("manifest") or []
    if manifest:
        lines += ["", "## File hashes (BLAKE3)", ""]
        lines += [
            f"- `{m['blake3']}` {human_bytes(m['size'])} `{m['path']}`" for m in manifest[:200]
        ]
        if len(manifest) > 200 or doc["recheck"].get("manifest_truncated"):
            lines.append("- … (the full list is in the JSON report)")
    return "\n".join(lines) + "\n"
