"""Messages keep their promise: usage errors, plurals, sizes, names escaped for the terminal,
and the small statements (first backup is full, init on a file, prune's margin) that users act on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from casbackup.cli.render import printable
from casbackup.maintenance.prune import UNINDEXED_MARGIN_S
from casbackup.repo.pack import pack_name
from casbackup.testing.fixtures import PASSWORD, open_repo, run_cli
from casbackup.units import human_bytes, plural
from tests.cli.conftest import assert_one_error


# ------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["backup", "--bogus"], "no such option '--bogus' (see 'casbackup backup --help')"),
        (["restore", "latest"], "missing option '-t' / '--target'"),
        (["ls"], "missing argument 'SNAPSHOT[:PATH]'"),
        (["nosuchcommand"], "no such command 'nosuchcommand'"),
        (["check", "--workers", "0"], "invalid value for '--workers'"),
        (["prune", "--max-unused", "200%"], "is not a percentage"),
        (["snapshots", "extra"], "got unexpected extra argument (extra)"),
        (["key", "remove"], "(see 'casbackup key remove --help')"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    res = run_cli(*args, repo=str(tmp_path / "repo"))
    assert_one_error(res, 2, fragment)
    assert "Usage:" not in res.err and "Try '" not in res.err


def test_help_still_shows_the_usage() -> None:
    res = run_cli("backup", "--help")
    assert res.code == 0 and res.out.startswith("Usage: casbackup backup")
    assert run_cli("--help").out.startswith("Usage: casbackup [OPTIONS] COMMAND")


# ------------------------------------------------------------------ units and words
def test_human_bytes_rounds_before_it_picks_a_unit() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1) == "1 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1023.6) == "1.0 KiB"  # was '1024 B'
    assert human_bytes(3481) == "3.4 KiB"
    assert human_bytes(1048575) == "1.0 MiB"  # was '1024.0 KiB'
    assert human_bytes(-3481) == "-3.4 KiB"
    assert human_bytes(-0.2) == "0 B"
    assert human_bytes(5 << 60) == "5.0 EiB"


def test_plural() -> None:
    assert plural(1, "file") == "1 file"
    assert plural(0, "file") == "0 files"
    assert plural(2, "match", "matches") == "2 matches"


def test_no_message_says_1_files(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "only").write_text("one")
    backup = run_cli("backup", str(src), repo=repo)
    assert backup.code == 0, backup.err
    restore = run_cli("restore", "latest", "--target", str(tmp_path / "t"), repo=repo)
    snaps = run_cli("snapshots", repo=repo)
    check = run_cli("check", repo=repo)
    unlock = run_cli("unlock", repo=repo)
    other = str(tmp_path / "other")
    assert run_cli("init", "--insecure-test-kdf", repo=other).code == 0
    more = [
        run_cli(*args, repo=repo, env={"CASBACKUP_FROM_PASSWORD": PASSWORD})
        for args in (["copy", "-r", other, "--from-repo", repo], ["forget", "--keep-last", "1"],
                     ["prune"], ["stats"], ["repair", "index"], ["check", "--read-data"],
                     ["find", "only"], ["verify", "latest"])
    ]  # fmt: skip
    assert all(r.code == 0 for r in more), [r.err for r in more]
    text = backup.out + restore.out + snaps.out + check.out + unlock.out
    text += "".join(r.out + r.err for r in more)
    words = "files|folders|snapshots|packs|blobs|trees|locks|chunks|matches|applications|entries"
    assert not re.search(rf"\b1 ({words})\b", text), text
    assert "1 snapshot\n" in snaps.out
    assert "checked 1 snapshot," in check.out
    assert "processed 1 file," in backup.out


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's read-anything capabilities")
def test_one_partial_application_was_saved(tmp_path: Path) -> None:
    """``backup --all`` with one application whose files could not all be read."""
    import subprocess
    import sys

    from tests.cli.test_bad_input import _drop_dac_capabilities

    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine").write_text("fine")
    (src / "secret").write_text("secret")
    (src / "secret").chmod(0)
    (tmp_path / "c.toml").write_text(
        f'version = 1\n[repository]\nlocation = "{repo}"\n'
        f'[[applications]]\nname = "one"\nsources = ["{src}"]\n'
    )
    env = {
        **os.environ,
        "CASBACKUP_CONFIG": str(tmp_path / "c.toml"),
        "CASBACKUP_PASSWORD": PASSWORD,
    }
    res = subprocess.run([sys.executable, "-m", "casbackup.cli.main", "backup", "--all"],
                         capture_output=True, text=True, env=env, preexec_fn=_drop_dac_capabilities,
                         timeout=120)  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: 1 application was saved with files that could not be read"
    )


# ------------------------------------------------------------------ terminal escaping
def test_printable_escapes_what_would_steer_a_terminal() -> None:
    assert printable("plain name.txt") == "plain name.txt"
    assert printable("caf\u00e9") == "caf\u00e9"  # letters stay letters
    assert printable("evil\x1b[31mred\nline\r") == "evil\\x1b[31mred\\nline\\r"
    assert printable(b"bad\xff\xfeend") == "bad\\xff\\xfeend"
    assert printable(os.fsdecode(b"bad\xff")) == "bad\\xff"
    assert printable("a\x9bb") == "a\\x9bb"  # a C1 CSI
    assert printable("abc\u202etxt.exe") == "abc\\u202etxt.exe"  # a right-to-left override
    assert printable("x\u2028y") == "x\\u2028y"


EVIL = b"evil\x1b]0;owned\x07\x1b[2J\nfake line\xff"


@pytest.fixture
def evil_repo(tmp_path: Path) -> tuple[str, Path]:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "calm").write_text("1")
    assert run_cli("backup", str(src), repo=repo).code == 0
    with open(os.path.join(os.fsencode(src), EVIL), "wb") as f:
        f.write(b"2")
    os.symlink(os.fsdecode(EVIL), src / "link")
    assert run_cli("backup", str(src), repo=repo).code == 0
    return repo, src


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\ufffd" not in text
    assert "fake line" not in text.replace("\\nfake line", "")  # never on a line of its own


@pytest.mark.slow
def test_ls_find_diff_escape_names_and_json_keeps_them_raw(evil_repo: tuple[str, Path]) -> None:
    repo, src = evil_repo
    shown = printable(EVIL)
    assert shown == "evil\\x1b]0;owned\\x07\\x1b[2J\\nfake line\\xff"
    ls = run_cli("ls", "latest", repo=repo)
    long = run_cli("ls", "-l", f"latest:{src}", repo=repo)
    find = run_cli("find", "evil*", repo=repo)
    diff = run_cli("diff", *_ids(repo), repo=repo)
    for res in (ls, long, find, diff):
        assert res.code == 0, res.err
        _no_raw_controls(res.out)
        assert shown in res.out
    assert f"-> {shown}" in long.out  # the symlink's target too
    docs = [
        json.loads(line) for line in run_cli("--json", "ls", "latest", repo=repo).out.splitlines()
    ]
    assert os.fsdecode(src / os.fsdecode(EVIL)) in {d["path"] for d in docs}
    changes = [
        json.loads(line)
        for line in run_cli("--json", "diff", *_ids(repo), repo=repo).out.splitlines()
    ]
    assert os.fsencode(changes[0]["path"]) == os.fsencode(src) + b"/" + EVIL or any(
        os.fsencode(c.get("path", "")) == os.fsencode(src) + b"/" + EVIL for c in changes
    )


@pytest.mark.slow
def test_restore_and_check_messages_escape_names(
    evil_repo: tuple[str, Path], tmp_path: Path
) -> None:
    repo, src = evil_repo
    target = tmp_path / "target"
    ref = f"latest:{src}/{os.fsdecode(EVIL)}"
    assert run_cli("restore", ref, "--target", str(target), repo=repo).code == 0
    again = run_cli("restore", ref, "--target", str(target), repo=repo)  # a conflict
    assert_one_error(again, 26, printable(EVIL))
    _no_raw_controls(again.err)
    # Damage the pack that holds the file's data: check names the file, escaped.
    with open_repo(repo) as r:
        snap = r.resolve_snapshot("latest")
        node = r.find_node(snap.root, f"{src}/{os.fsdecode(EVIL)}")
        assert node is not None
        loc = r.cache.get(node.content[0])
    path = os.path.join(repo, pack_name(loc.pack))
    with open(path, "r+b") as f:
        f.seek(loc.offset + 20)
        byte = f.read(1)
        f.seek(loc.offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    check = run_cli("check", "--read-data", repo=repo)
    assert check.code == 29
    _no_raw_controls(check.err)
    assert printable(EVIL) in check.err, check.err


def _ids(repo: str) -> list[str]:
    snaps = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    return [s["id"] for s in snaps][:2]


# ------------------------------------------------------------------ statements users act on
def test_a_first_backup_is_recorded_as_full(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    first = run_cli("backup", str(src), repo=repo)  # asked: incremental (the default)
    assert "reading every file" in first.err
    second = run_cli("backup", str(src), repo=repo)
    snaps = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    assert [s["type"] for s in snaps] == ["full", "incremental"]
    assert "saved (full)" in first.out and "saved (incremental" in second.out


def test_the_configs_password_command_is_not_run_by_a_shell(tmp_path: Path) -> None:
    """The config's password_command, as documented: split into words, never run by a shell
    (through a shell, '$(...)' would run and '>' would send the passphrase into a file)."""
    import subprocess
    import sys

    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    script = tmp_path / "pw.py"
    seen = tmp_path / "argv.json"
    script.write_text(f"import json, sys\nopen({str(seen)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      f"print({PASSWORD!r})\n")  # fmt: skip
    marker = tmp_path / "marker"
    command = f"{sys.executable} {script} '$(touch {marker})' > {marker}"
    (tmp_path / "c.toml").write_text(
        f"version = 1\n[repository]\nlocation = {json.dumps(repo)}\n"
        f"password_command = {json.dumps(command)}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CASBACKUP_PASSWORD"}
    res = subprocess.run([sys.executable, "-m", "casbackup.cli.main", "snapshots"],
                         capture_output=True, text=True, timeout=120,
                         env={**env, "CASBACKUP_CONFIG": str(tmp_path / "c.toml")})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    assert json.loads(seen.read_text()) == [f"$(touch {marker})", ">", str(marker)]


def test_init_on_a_regular_file_names_the_path_and_the_problem(tmp_path: Path) -> None:
    file = tmp_path / "afile"
    file.write_text("not a folder")
    res = run_cli("init", "--insecure-test-kdf", repo=str(file))
    assert_one_error(res, 25, f"{file} is a file, not a folder")
    assert "keys/" not in res.err
    inside = run_cli("init", "--insecure-test-kdf", repo=str(file / "sub" / "repo"))
    assert_one_error(inside, 25, f"{file} is a file, not a folder")
    assert file.read_text() == "not a folder"


def test_the_margin_is_the_hour_the_messages_name() -> None:
    # check ("'prune' removes it once it is an hour old") and prune ("kept until an hour old")
    # name this margin in words; test_crash.py shows both after a real crash.
    assert UNINDEXED_MARGIN_S == 3600


@pytest.mark.slow
def test_prune_states_a_range_that_holds_what_it_frees(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", "--pack-size", "1", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(os.urandom(3000))
    assert run_cli("backup", str(src), repo=repo).code == 0
    (src / "gone").write_bytes(os.urandom(3500))
    assert run_cli("backup", str(src), repo=repo).code == 0
    (src / "gone").unlink()
    assert run_cli("backup", str(src), repo=repo).code == 0
    assert run_cli("forget", "--keep-last", "1", repo=repo).code == 0
    plan = run_cli("prune", "--dry-run", repo=repo)
    assert plan.code == 0, plan.err
    m = re.search(r"space to free: (\S+ \S+)(?: to (\S+ \S+))?\n", plan.out)
    assert m, plan.out
    assert "about 0 B" not in plan.out

    def size(folder: str) -> int:
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)

    before = size(repo)
    done = run_cli("prune", repo=repo)
    assert done.code == 0, done.err
    freed = before - size(repo)
    assert freed > 3000  # the pack holding 'gone' went
    low, high = m.group(1), m.group(2) or m.group(1)
    assert _parse(low) <= freed + 1024 and freed <= _parse(high) + 1024, (plan.out, freed)


def _parse(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}[unit]


def test_restore_counts_symlinks_apart_from_files(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    os.symlink("file", src / "link1")
    os.symlink("nowhere", src / "link2")
    os.mkfifo(src / "pipe")  # a FIFO is no file either
    assert run_cli("backup", str(src), repo=repo).code == 0
    ref = f"latest:{src}"
    res = run_cli("restore", ref, "--target", str(tmp_path / "t"), repo=repo)
    assert res.code == 0, res.err
    assert "restored 1 file, 2 symlinks, 1 special file, 0 folders," in res.out, res.out
    doc = json.loads(
        run_cli(
            "--json", "restore", ref, "--target", str(tmp_path / "t2"), repo=repo
        ).out.splitlines()[-1]
    )
    assert (doc["files"], doc["symlinks"], doc["specials"]) == (1, 2, 1)
    dry = run_cli("restore", ref, "--target", str(tmp_path / "t3"), "--dry-run", repo=repo)
    assert "would restore 1 file, 2 symlinks, 1 special file," in dry.out


def test_restoring_a_whole_snapshot_into_its_own_source_says_where_files_land(
    cli_repo, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """helper-61: a newcomer restoring "into the original folder" got the snapshot's full
    path nested inside the live source, without a word."""
    src = tmp_path / "app"
    src.mkdir()
    (src / "f.txt").write_text("x")
    assert run_cli("-q", "backup", str(src), repo=cli_repo).code == 0
    res = run_cli("restore", "latest", "--target", str(src), repo=cli_repo)
    assert res.code == 0, res.err
    assert f"restore SNAPSHOT:{src} --target {src}" in res.err
    assert (src / str(src).lstrip("/") / "f.txt").exists()  # where it said they would land
    elsewhere = run_cli("restore", "latest", "--target", str(tmp_path / "r"), repo=cli_repo)
    assert elsewhere.code == 0 and "is inside" not in elsewhere.err
    folder = run_cli("restore", f"latest:{src}", "--target", str(src), "--overwrite",
                     repo=cli_repo)  # fmt: skip
    assert folder.code == 0 and "is inside" not in folder.err
