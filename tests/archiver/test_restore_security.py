"""Restore never writes outside its target, whatever a hostile repository's trees say.

Every attack runs against hand-made trees (encoded by hand where the encoder would
be too polite) and then compares a sentinel directory beside the target, and
everything else beside it, with how it was before.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3
import pytest

from casbackup.archiver.restore import RestoreOptions, RestoreResult, restore
from casbackup.errors import CasError, FormatError, RestoreError
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, now_utc
from casbackup.repo.tree import Node, NodeKind, encode_tree
from casbackup.testing.fixtures import run_cli


# ------------------------------------------------------------------ building hostile trees
def file_node(repo: Repository, name: bytes, data: bytes, **kw: object) -> Node:
    chunk = repo.save_blob(Kind.DATA, data)[0]
    return Node(name=name, kind=NodeKind.FILE, size=len(data), content=(chunk,),
                content_hash=blake3.blake3(data).digest(), **kw)  # type: ignore[arg-type]  # fmt: skip


def raw_tree(repo: Repository, nodes: list[Node]) -> BlobId:
    """Encode in the given order, unchecked: names, duplicates and order as the attacker likes."""
    return repo.save_blob(Kind.TREE, encode_tree(nodes))[0]


def dir_node(repo: Repository, name: bytes, children: list[Node]) -> Node:
    return Node(name=name, kind=NodeKind.DIR, mode=0o755, subtree=raw_tree(repo, children))


def symlink_node(name: bytes, target: bytes) -> Node:
    return Node(name=name, kind=NodeKind.SYMLINK, mode=0o777, link_target=target)


def snapshot_of(repo: Repository, nodes: list[Node]) -> Snapshot:
    time_text, start_ns = now_utc()
    snap = Snapshot(time=time_text, start_ns=start_ns, host="h", user="u", paths=("/",),
                    tree=raw_tree(repo, nodes).hex())  # fmt: skip
    return repo.save_snapshot(snap)


# ------------------------------------------------------------------ the arena
class Arena:
    """``target`` and a sentinel ``outside`` folder side by side in one folder."""

    def __init__(self, base: Path) -> None:
        self.base = base / "arena"
        self.target = self.base / "target"
        self.outside = self.base / "outside"
        self.outside.mkdir(parents=True)
        (self.outside / "keep.txt").write_bytes(b"precious")
        self.secret = self.outside / "keep.txt"
        self.before = self.listing()

    def listing(self) -> dict[str, tuple[str, bytes, int]]:
        """Everything in the arena except the target: kind, content or link, mode."""
        seen: dict[str, tuple[str, bytes, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            if os.path.abspath(dirpath) == str(self.base):
                dirnames[:] = [d for d in dirnames if d != "target"]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                rel = os.path.relpath(path, self.base)
                if stat.S_ISLNK(st.st_mode):
                    seen[rel] = ("link", os.fsencode(os.readlink(path)), 0)
                elif stat.S_ISREG(st.st_mode):
                    seen[rel] = ("file", Path(path).read_bytes(), st.st_mode)
                else:
                    seen[rel] = ("dir", b"", st.st_mode)
        return seen

    def assert_untouched(self) -> None:
        assert self.listing() == self.before
        assert set(os.listdir(self.base)) <= {"outside", "target"}


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    return Arena(tmp_path)


def run(repo: Repository, snap: Snapshot, arena: Arena, **kw: object) -> RestoreResult:
    return restore(repo, snap, RestoreOptions(target=str(arena.target), **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------ names the decoder refuses
BAD_NAMES = [b"..", b".", b"a/b", b"x\0y", b"", b"../../outside/keep.txt", b"/abs"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_name_at_the_root_is_refused(repo: Repository, arena: Arena, name: bytes) -> None:
    snap = snapshot_of(repo, [file_node(repo, name, b"evil")])
    with pytest.raises(FormatError) as info:
        run(repo, snap, arena)
    assert "invalid name" in str(info.value) and "\n" not in str(info.value)
    arena.assert_untouched()
    assert not arena.target.exists() or os.listdir(arena.target) == []


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_name_below_the_root_is_refused(
    repo: Repository, arena: Arena, name: bytes
) -> None:
    evil_dir = dir_node(repo, name, [file_node(repo, b"keep.txt", b"overwritten!")])
    snap = snapshot_of(repo, [dir_node(repo, b"d", [evil_dir, file_node(repo, name, b"evil")]),
                              file_node(repo, b"z", b"fine")])  # fmt: skip
    result = run(repo, snap, arena)
    assert len(result.errors) == 1 and "invalid name" in result.errors[0]
    assert result.errors[0].startswith("d: ")
    assert (arena.target / "z").read_bytes() == b"fine"  # the rest of the snapshot restores
    assert os.listdir(arena.target / "d") == []
    arena.assert_untouched()


def test_cli_reports_a_hostile_tree_in_one_line(
    repo: Repository, repo_path: str, arena: Arena
) -> None:
    snap = snapshot_of(repo, [dir_node(repo, b"d", [file_node(repo, b"..", b"evil")])])
    res = run_cli("restore", snap.id, "--target", str(arena.target), repo=repo_path)
    assert res.code == RestoreError.exit_code
    assert "Traceback" not in res.err
    # One entry failed: the one error line names it and why.
    assert res.err.strip().splitlines() == [
        "error: d: directory listing unreadable: tree holds an invalid name b'..'"
    ]
    snap = snapshot_of(repo, [file_node(repo, b"x\0y", b"evil")])
    res = run_cli("restore", snap.id, "--target", str(arena.target), repo=repo_path)
    assert res.code == FormatError.exit_code and len(res.err.strip().splitlines()) == 1, res.err
    arena.assert_untouched()


# ------------------------------------------------------------------ duplicates and symlinks
@pytest.mark.parametrize("overwrite", [False, True])
def test_duplicate_name_symlink_then_directory(
    repo: Repository, arena: Arena, overwrite: bool
) -> None:
    link = symlink_node(b"a", os.fsencode(arena.outside))
    inner = dir_node(repo, b"a", [file_node(repo, b"keep.txt", b"overwritten!"),
                                  file_node(repo, b"new.txt", b"planted")])  # fmt: skip
    for nodes in ([link, inner], [inner, link]):
        snap = snapshot_of(repo, nodes)
        with pytest.raises(FormatError, match="sorted"):
            run(repo, snap, arena, overwrite=overwrite)
        arena.assert_untouched()


def test_duplicate_name_symlink_then_file_with_overwrite(repo: Repository, arena: Arena) -> None:
    snap = snapshot_of(repo, [symlink_node(b"a", os.fsencode(arena.secret)),
                              file_node(repo, b"a", b"overwritten!")])  # fmt: skip
    with pytest.raises(CasError):
        run(repo, snap, arena, overwrite=True)
    arena.assert_untouched()


def test_symlink_from_an_earlier_restore_is_replaced_not_followed(
    repo: Repository, arena: Arena
) -> None:
    """Two snapshots: the first plants a symlink to a file outside, the second a file by its name."""
    first = snapshot_of(repo, [symlink_node(b"a", os.fsencode(arena.secret)),
                               dir_node(repo, b"d", [symlink_node(b"b", os.fsencode(arena.secret))])])  # fmt: skip
    run(repo, first, arena)
    assert os.readlink(arena.target / "a") == str(arena.secret)
    second = snapshot_of(repo, [file_node(repo, b"a", b"overwritten!"),
                                dir_node(repo, b"d", [file_node(repo, b"b", b"overwritten!")])])  # fmt: skip
    with pytest.raises(RestoreError, match="exists in the target"):
        run(repo, second, arena)
    arena.assert_untouched()
    result = run(repo, second, arena, overwrite=True)
    assert result.errors == []
    assert (arena.target / "a").read_bytes() == b"overwritten!" and not (
        arena.target / "a"
    ).is_symlink()
    assert (arena.target / "d" / "b").read_bytes() == b"overwritten!"
    arena.assert_untouched()


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("depth", [0, 2])
def test_existing_symlink_where_a_directory_goes_is_refused_or_replaced(
    repo: Repository, arena: Arena, overwrite: bool, depth: int
) -> None:
    parents = [b"p%d" % i for i in range(depth)]
    where = arena.target.joinpath(*(p.decode() for p in parents))
    where.mkdir(parents=True)
    (where / "d").symlink_to(arena.outside)
    node = dir_node(repo, b"d", [file_node(repo, b"keep.txt", b"overwritten!"),
                                 file_node(repo, b"planted", b"x")])  # fmt: skip
    for parent in reversed(parents):
        node = dir_node(repo, parent, [node])
    snap = snapshot_of(repo, [node])
    result = run(repo, snap, arena, overwrite=overwrite)
    if overwrite:  # the symlink itself is replaced by a real folder
        assert result.errors == []
        assert not (where / "d").is_symlink()
        assert (where / "d" / "keep.txt").read_bytes() == b"overwritten!"
    else:
        (error,) = result.errors  # reported by path; nothing below it is restored
        assert error.startswith("/".join([*(p.decode() for p in parents), "d"]) + ": ")
        assert "symlink is never followed" in error
        assert (where / "d").is_symlink()
    arena.assert_untouched()


def test_symlink_restored_earlier_in_the_same_tree_is_not_followed(
    repo: Repository, arena: Arena
) -> None:
    """A symlink 'a' -> outside, and a separate path that only a follower would route through it."""
    snap = snapshot_of(repo, [symlink_node(b"a", os.fsencode(arena.outside)),
                              dir_node(repo, b"b", [symlink_node(b"c", b"../a/keep.txt")])])  # fmt: skip
    result = run(repo, snap, arena, overwrite=True)
    assert result.errors == []
    assert os.readlink(arena.target / "b" / "c") == "../a/keep.txt"
    arena.assert_untouched()


# ------------------------------------------------------------------ hard links
def test_hard_link_identity_never_reaches_files_outside(repo: Repository, arena: Arena) -> None:
    """A hard-link group whose recorded (device, inode) is that of a file outside the target."""
    st = os.stat(arena.secret)
    same = {"inode": st.st_ino, "device": st.st_dev, "nlink": 3}
    snap = snapshot_of(repo, [dir_node(repo, b"d", [file_node(repo, b"h2", b"overwritten!", **same)]),
                              file_node(repo, b"h1", b"overwritten!", **same)])  # fmt: skip
    result = run(repo, snap, arena)
    assert result.errors == [] and result.links == 1
    h1, h2 = os.stat(arena.target / "h1"), os.stat(arena.target / "d" / "h2")
    assert h1.st_ino == h2.st_ino != st.st_ino
    assert os.stat(arena.secret).st_nlink == 1
    arena.assert_untouched()


def test_hard_link_source_behind_a_swapped_directory_is_refused(
    repo: Repository, arena: Arena
) -> None:
    """The first name of a hard-link group sits in 'd'; in the target, 'd' already is a symlink out."""
    (arena.target).mkdir()
    (arena.target / "d").symlink_to(arena.outside)
    same = {"inode": 77, "device": 1, "nlink": 2}
    snap = snapshot_of(repo, [dir_node(repo, b"d", [file_node(repo, b"keep.txt", b"overwritten!", **same)]),
                              file_node(repo, b"e", b"overwritten!", **same)])  # fmt: skip
    result = run(repo, snap, arena)
    (error,) = result.errors
    assert error.startswith("d: ") and "symlink is never followed" in error
    # 'd' is skipped whole, so 'e' is the group's first restored name: a file of its own.
    assert (arena.target / "e").read_bytes() == b"overwritten!"
    assert os.stat(arena.target / "e").st_nlink == 1
    arena.assert_untouched()
    # --overwrite replaces the link by a folder: the group is whole, inside the target.
    result = run(repo, snap, arena, overwrite=True)
    assert result.errors == [] and not (arena.target / "d").is_symlink()
    keep, e = os.stat(arena.target / "d" / "keep.txt"), os.stat(arena.target / "e")
    assert keep.st_ino == e.st_ino and keep.st_nlink == 2
    arena.assert_untouched()


# ------------------------------------------------------------------ clobbering
def test_existing_file_is_not_clobbered_without_overwrite(repo: Repository, arena: Arena) -> None:
    snap = snapshot_of(repo, [dir_node(repo, b"d", [file_node(repo, b"f", b"new")]),
                              file_node(repo, b"g", b"new")])  # fmt: skip
    (arena.target / "d").mkdir(parents=True)
    (arena.target / "d" / "f").write_bytes(b"mine")
    with pytest.raises(RestoreError, match=r"d/f exists in the target \(use --overwrite\)"):
        run(repo, snap, arena)
    assert (arena.target / "d" / "f").read_bytes() == b"mine"
    run(repo, snap, arena, overwrite=True)
    assert (arena.target / "d" / "f").read_bytes() == b"new"
    arena.assert_untouched()


def test_overwrite_replaces_a_hard_link_without_touching_its_other_name(
    repo: Repository, arena: Arena
) -> None:
    arena.target.mkdir()
    os.link(arena.secret, arena.target / "f")  # same file system: tmp_path
    os.link(arena.secret, arena.target / "g")
    arena.before = arena.listing()  # the link count changed; contents and modes are what count
    snap = snapshot_of(repo, [file_node(repo, b"f", b"overwritten!"),
                              file_node(repo, b"g", b"overwritten!", nlink=2, inode=5, device=5),
                              file_node(repo, b"h", b"overwritten!", nlink=2, inode=5, device=5)])  # fmt: skip
    result = run(repo, snap, arena, overwrite=True)
    assert result.errors == []
    assert arena.secret.read_bytes() == b"precious"
    for name in ("f", "g", "h"):
        assert (arena.target / name).read_bytes() == b"overwritten!"
        assert os.stat(arena.target / name).st_ino != os.stat(arena.secret).st_ino
    assert os.stat(arena.secret).st_nlink == 1
    arena.assert_untouched()


def test_overwrite_never_replaces_a_directory_with_a_file(repo: Repository, arena: Arena) -> None:
    (arena.target / "f").mkdir(parents=True)
    (arena.target / "f" / "inside").write_bytes(b"mine")
    snap = snapshot_of(repo, [file_node(repo, b"f", b"new")])
    result = run(repo, snap, arena, overwrite=True)
    assert result.errors == ["f: is a directory in the target; not replacing it"]
    assert (arena.target / "f" / "inside").read_bytes() == b"mine"


def test_a_file_where_a_folder_goes_is_replaced_only_with_overwrite(
    repo: Repository, arena: Arena
) -> None:
    arena.target.mkdir()
    (arena.target / "d").write_bytes(b"mine")
    snap = snapshot_of(repo, [dir_node(repo, b"d", [file_node(repo, b"f", b"new")])])
    result = run(repo, snap, arena)
    assert result.errors == ["d: refusing to restore into it: it exists in the target and is "
                             "not a directory (a symlink is never followed; --overwrite replaces it)"]  # fmt: skip
    assert (arena.target / "d").read_bytes() == b"mine"
    result = run(repo, snap, arena, overwrite=True)
    assert result.errors == [] and (arena.target / "d" / "f").read_bytes() == b"new"
    arena.assert_untouched()
