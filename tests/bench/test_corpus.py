"""The benchmark corpus is deterministic, and so is its mutation."""

from __future__ import annotations

import os
from pathlib import Path

from bench.corpus import (
    LARGE_MIN,
    CorpusSpec,
    build_corpus,
    compare_trees,
    mutate_corpus,
    regular_files,
    revert_mutation,
)

SPEC = CorpusSpec(total_bytes=24 << 20, n_files=400, seed=7)


def test_same_seed_same_tree(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sa, sb = build_corpus(a, SPEC), build_corpus(b, SPEC)
    assert compare_trees(a, b) == []
    assert (sa.files, sa.symlinks, sa.bytes) == (sb.files, sb.symlinks, sb.bytes)
    assert sa.symlinks >= 3 and sa.by_kind["dup"][0] >= 3
    assert any(os.path.getsize(a / f) >= LARGE_MIN for f in regular_files(a))


def test_other_seed_other_tree(tmp_path: Path) -> None:
    build_corpus(tmp_path / "a", SPEC)
    build_corpus(tmp_path / "b", CorpusSpec(SPEC.total_bytes, SPEC.n_files, seed=8))
    assert compare_trees(tmp_path / "a", tmp_path / "b") != []


def test_mutation_changes_what_it_says_and_reverts(tmp_path: Path) -> None:
    a, b, undo = tmp_path / "a", tmp_path / "b", tmp_path / "undo"
    build_corpus(a, SPEC)
    build_corpus(b, SPEC)
    before = {f: os.path.getsize(a / f) for f in regular_files(a)}
    rep = mutate_corpus(a, SPEC, undo)
    after = {f: os.path.getsize(a / f) for f in regular_files(a)}

    assert len(rep.appended) == 5 and len(rep.added) == 5 and len(rep.deleted) == 5
    assert 1 <= len(rep.inserted) <= 3
    assert set(after) == (set(before) - set(rep.deleted)) | set(rep.added)
    assert all(after[f] > before[f] for f in rep.appended)
    assert all(after[f] == before[f] + 4096 for f in rep.inserted)
    changed = {f for f in set(before) & set(after) if (a / f).read_bytes() != (b / f).read_bytes()}
    assert changed == set(rep.appended) | set(rep.inserted)
    assert rep.bytes_written < 0.1 * sum(before.values())

    # the same mutation of the twin tree gives the same tree
    mutate_corpus(b, SPEC)
    assert compare_trees(a, b) == []

    revert_mutation(a, rep, undo)
    fresh = tmp_path / "fresh"
    build_corpus(fresh, SPEC)
    assert compare_trees(a, fresh) == []
