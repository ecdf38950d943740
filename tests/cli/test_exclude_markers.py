"""``--exclude-caches``, ``--exclude-if-present`` and ``--exclude-larger-than`` (restic's options
of the same names), on the command line and as an application's config keys.

They are decided twice in a re-backup: by the walk, and by the reader processes that compare
whole subtrees with the parent snapshot and answer "unchanged" for folders the walk then never
lists. A rule the comparison did not apply would keep a newly tagged cache folder in every
later snapshot (or keep a big file the limit now leaves out), so each test backs up more than
once, with a parent, over folders deep enough to be compared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import assert_one_error

TAG = b"Signature: 8a477f597d28d172789f06886806bc55\n"


def _paths(repo: str, snap: str = "latest") -> set[str]:
    res = run_cli("--json", "ls", snap, repo=repo)
    assert res.code == 0, res.err
    return {json.loads(line)["path"] for line in res.out.splitlines()}


def _tree(root: Path) -> None:
    for top in ("home", "srv"):
        for sub in range(4):
            d = root / top / f"d{sub}" / "deeper"
            d.mkdir(parents=True)
            (d / "file.txt").write_text(f"{top} {sub}\n")
    (root / "home" / "d1" / "deeper" / "big.img").write_bytes(b"\1" * 300_000)


def _backup(repo: str, src: Path, *args: str) -> None:
    res = run_cli("backup", str(src), *args, repo=repo)
    assert res.code == 0, res.err


def test_a_folder_tagged_after_the_parent_is_left_out_next_time(cli_repo: str, tmp_path: Path) -> None:  # fmt: skip
    src = tmp_path / "src"
    _tree(src)
    cache = src / "home" / "d2"
    time.sleep(2.1)  # older than the parent's race guard: the readers compare these folders
    _backup(cli_repo, src, "--exclude-caches")
    assert f"{cache}/deeper/file.txt" in _paths(cli_repo)
    (cache / "CACHEDIR.TAG").write_bytes(TAG)  # the folder changes; its subfolder does not
    _backup(cli_repo, src, "--exclude-caches")
    paths = _paths(cli_repo)
    assert not any(p.startswith(str(cache)) for p in paths), sorted(paths)
    assert f"{src}/home/d3/deeper/file.txt" in paths
    # A file named like the tag without its signature tags nothing.
    (src / "srv" / "d0" / "CACHEDIR.TAG").write_bytes(b"just a file\n")
    _backup(cli_repo, src, "--exclude-caches")
    assert f"{src}/srv/d0/deeper/file.txt" in _paths(cli_repo)
    # Untagged again: back in the next snapshot.
    (cache / "CACHEDIR.TAG").unlink()
    _backup(cli_repo, src, "--exclude-caches")
    assert f"{cache}/deeper/file.txt" in _paths(cli_repo)


def test_options_that_change_between_backups_of_unchanged_folders(cli_repo: str, tmp_path: Path) -> None:  # fmt: skip
    """Nothing in the tree changes: only the options do. The parent's folders must not be
    taken as they were (the readers' comparison applies the rules too)."""
    src = tmp_path / "src"
    _tree(src)
    (src / "srv" / "d1" / "deeper" / ".nobackup").write_bytes(b"")
    time.sleep(2.1)  # older than the parent's race guard: the readers compare these folders
    _backup(cli_repo, src)
    everything = _paths(cli_repo)
    assert f"{src}/srv/d1/deeper/file.txt" in everything
    _backup(cli_repo, src, "--exclude-if-present", ".nobackup", "--exclude-larger-than", "100K")
    paths = _paths(cli_repo)
    assert f"{src}/srv/d1/deeper" not in paths and f"{src}/srv/d1" in paths
    assert f"{src}/home/d1/deeper/big.img" not in paths
    assert f"{src}/home/d1/deeper/file.txt" in paths
    _backup(cli_repo, src)
    assert _paths(cli_repo) == everything


def test_an_applications_config_keys(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    (src / "home" / "d0" / "CACHEDIR.TAG").write_bytes(TAG)
    (src / "home" / "d3" / "skip-me").write_bytes(b"x")
    repo = tmp_path / "repo"
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\n\n[[applications]]\nname = "site"\n'
        f'sources = ["{src}"]\nexclude_caches = true\nexclude_if_present = ["skip-me"]\n'
        'exclude_larger_than = "100K"\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    assert run_cli("init", "--insecure-test-kdf", repo=str(repo)).code == 0
    for _ in range(2):
        res = run_cli("backup", "--app", "site", env=env)
        assert res.code == 0, res.err
        paths = _paths(str(repo))
        assert not any(p.startswith((f"{src}/home/d0", f"{src}/home/d3")) for p in paths)
        assert f"{src}/home/d1/deeper/big.img" not in paths
        assert f"{src}/home/d2/deeper/file.txt" in paths
    # --exclude-larger-than 0 on the command line lifts the application's limit.
    res = run_cli("backup", "--app", "site", "--exclude-larger-than", "0", env=env)
    assert res.code == 0, res.err
    assert f"{src}/home/d1/deeper/big.img" in _paths(str(repo))


def test_bad_values_are_one_line_errors(cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    res = run_cli("backup", str(src), "--exclude-if-present", "a/b", repo=cli_repo)
    assert_one_error(res, 2, "--exclude-if-present", "file name")
    res = run_cli("backup", str(src), "--exclude-larger-than", "lots", repo=cli_repo)
    assert_one_error(res, 2, "--exclude-larger-than")
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[repository]\nlocation = "{cli_repo}"\n\n[[applications]]\nname = "a"\n'
        f'sources = ["{src}"]\nexclude_if_present = ["../x"]\nexclude_larger_than = true\n'
    )
    res = run_cli("backup", "--app", "a", env={"CASBACKUP_CONFIG": str(config)})
    assert res.code != 0 and "Traceback" not in res.err
    assert "exclude_if_present" in res.err and "exclude_larger_than" in res.err
    assert json.loads(run_cli("--json", "snapshots", repo=cli_repo).out) == []
