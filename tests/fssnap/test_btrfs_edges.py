"""Btrfs snapshots against awkward sources: a source that is a symlink, names with spaces."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from casbackup.fssnap.btrfs import SNAP_DIR
from tests.fssnap.conftest import write_site


def _subvolume(mnt: Path, name: str = "app") -> Path:
    subprocess.run(["btrfs", "subvolume", "create", str(mnt / name)], check=True,
                   capture_output=True)  # fmt: skip
    return mnt / name


def _latest(site: object) -> dict[str, object]:
    res = site.cli("--json", "snapshots", "--app", "webapp")  # type: ignore[attr-defined]
    assert res.code == 0, res.err
    return json.loads(res.out)[-1]  # type: ignore[no-any-return]


def _ls(site: object) -> dict[str, str]:
    res = site.cli("--json", "ls", "latest", "--app", "webapp")  # type: ignore[attr-defined]
    assert res.code == 0, res.err
    nodes = [json.loads(line) for line in res.out.splitlines()]
    return {n["path"]: n["type"] for n in nodes if "path" in n}


def test_symlink_source_is_a_link_and_its_target_is_frozen(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    """A source /srv/app -> (a folder on Btrfs): the link was read through the snapshot as if
    it were the folder (stored as a folder, its files twice) and the folder it points to,
    added as a source of its own, was read live, outside any snapshot."""
    data = _subvolume(btrfs_mount) / "data"
    data.mkdir()
    (data / "f.txt").write_text("frozen")
    link = tmp_path / "app-link"
    link.symlink_to(data)
    (tmp_path / "site").mkdir()
    site = write_site(tmp_path / "site", [str(link)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    nodes = _ls(site)
    assert nodes[str(link)] == "symlink", nodes
    assert nodes[str(data / "f.txt")] == "file" and str(link / "f.txt") not in nodes, nodes
    frozen = _latest(site)["fs_snapshots"]
    assert [(f["source"], f["origin"]) for f in frozen] == [  # type: ignore[index]
        (str(data), str(btrfs_mount / "app"))
    ], frozen
    assert os.listdir(btrfs_mount / SNAP_DIR) == []


def test_names_with_spaces(btrfs_mount: Path, tmp_path: Path) -> None:
    app = _subvolume(btrfs_mount, "my volume")
    (app / "a folder").mkdir()
    (app / "a folder" / "a file.txt").write_text("x")
    (tmp_path / "site").mkdir()
    site = write_site(tmp_path / "site", [str(app / "a folder")], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert _ls(site)[str(app / "a folder" / "a file.txt")] == "file"
    assert os.listdir(btrfs_mount / SNAP_DIR) == []
