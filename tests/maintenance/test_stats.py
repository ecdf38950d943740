"""stats: logical, unique and stored sizes, and the ratios between them."""

from __future__ import annotations

import json
import os

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.maintenance.stats import repository_stats, snapshot_stats
from casbackup.testing.fixtures import run_cli


def test_dedup_and_compression_are_measured(repo, repo_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    random_part = os.urandom(60_000)
    (src / "a").write_bytes(random_part)
    (src / "b").write_bytes(random_part)  # same content: deduplicated
    (src / "text").write_bytes(b"hello world\n" * 20_000)  # compresses well
    first = run_backup(repo, BackupOptions(paths=(str(src),), app="app")).snapshot
    second = run_backup(repo, BackupOptions(paths=(str(src),), app="app")).snapshot
    one = snapshot_stats(repo, [first])
    assert one.files == 3 and one.logical_bytes == 2 * 60_000 + 240_000
    assert one.unique_bytes == 60_000 + 240_000
    assert one.stored_bytes < one.unique_bytes and one.compression_ratio > 1.5
    both = snapshot_stats(repo, [first, second])
    assert both.logical_bytes == 2 * one.logical_bytes and both.unique_bytes == one.unique_bytes
    assert abs(both.dedup_ratio - 2 * one.dedup_ratio) < 1e-9
    whole = repository_stats(repo, [])
    assert whole.snapshots == 2 and whole.logical_bytes == both.logical_bytes
    assert whole.unique_bytes == both.unique_bytes and whole.chunks == both.chunks
    assert whole.packs >= 1 and whole.repository_bytes > whole.stored_bytes

    res = run_cli("--json", "stats", "--app", "app", repo=repo_path)
    doc = json.loads(res.out.splitlines()[-1])
    assert doc["logical_bytes"] == both.logical_bytes and doc["dedup_ratio"] > 1
    res = run_cli("stats", first.short_id, repo=repo_path)
    assert res.code == 0 and "Dedup ratio:" in res.out and "Compression ratio:" in res.out
    res = run_cli("stats", repo=repo_path)
    assert res.code == 0 and "Repository size:" in res.out
    assert run_cli("stats", "--app", "nope", repo=repo_path).code == 23
    latest = run_cli("stats", "latest", "--app", "app", repo=repo_path)  # as everywhere else
    assert latest.code == 0 and "Stats of the snapshot " in latest.out, latest.err


@pytest.mark.usefixtures("small_page_chunks")
def test_a_snapshot_of_deltas_counts_the_bases_it_keeps_alive(repo, repo_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A night stored as deltas needs the older nights' chunks to be read: its stored size
    counts them (otherwise ``stats latest`` showed ~60 KiB for a 7 MiB database whose
    restore needs ~4 MiB), each base once, and says how many chunks are deltas."""
    from tests.repo.test_delta import change_rows
    from tests.verify.apps import backup, make_app

    app, db = make_app(tmp_path, rows=20_000)
    first = backup(repo, app, [db])
    change_rows(db, 1)
    second = backup(repo, app, [db])
    one, two = snapshot_stats(repo, [first]), snapshot_stats(repo, [second])
    assert one.delta_chunks == 0 and one.bases == 0
    assert two.delta_chunks > 0 and two.bases > 0
    # Every base of the second night is a chunk of the first: restoring it costs about what
    # keeping the first night costs, and the compression ratio cannot run away.
    assert two.stored_bytes >= 0.9 * one.stored_bytes
    assert two.compression_ratio < 2 * one.compression_ratio
    both = snapshot_stats(repo, [first, second])
    assert both.bases == 0  # the bases are the first night's own chunks: counted once
    assert both.stored_bytes < one.stored_bytes + two.stored_bytes
    assert both.delta_chunks == two.delta_chunks

    res = run_cli("stats", second.short_id, repo=repo_path)
    assert res.code == 0, res.err
    assert "stored as deltas" in res.out and "delta bases of older snapshots" in res.out
