"""Conventions every command keeps: ``--json`` prints JSON, ``latest --app`` works wherever a
SNAPSHOT is taken, shell completion (bash, zsh, fish) through click's protocol, and a dry run
says in its exit code what the real run would do.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from casbackup.cli.main import COMMAND_MODULES, cli
from casbackup.testing.fixtures import PASSWORD, CliResult, run_cli
from tests.cli.test_apps import CONFIG, make_db


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config with two applications (one with SQLite) and two snapshots of 'notes'."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('notes')\n")
    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "index.md").write_text("# wiki\n")
    make_db(tmp_path / "app" / "notes.sqlite3", 20)
    (tmp_path / "casbackup.toml").write_text(CONFIG)
    assert run_cli("init", "--insecure-test-kdf", repo=str(tmp_path / "repo")).code == 0
    assert cli_in(tmp_path, "backup", "--app", "notes").code == 0
    (tmp_path / "app" / "main.py").write_text("print('notes 2')\n")
    assert cli_in(tmp_path, "backup", "--app", "notes").code == 0
    assert cli_in(tmp_path, "backup", "--app", "wiki").code == 0
    return tmp_path


def cli_in(site: Path, *args: str, input: bytes | None = None, **env: str) -> CliResult:
    full = {"CASBACKUP_CONFIG": str(site / "casbackup.toml"), "CASBACKUP_PASSWORD": PASSWORD, **env}
    return run_cli(*args, env=full, input=input)


def json_lines(text: str) -> list[object]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    return [json.loads(line) for line in lines]


def every_command_path() -> set[str]:
    """'backup', 'key list', 'repair index', ...: every leaf command of the CLI."""
    ctx = click.Context(cli)
    out: set[str] = set()
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            out |= {f"{name} {sub}" for sub in command.commands}
        else:
            out.add(name)
    return out


# What each command is run with under --json (after the site's setup). SNAP is replaced by the
# newest snapshot's id, T by a fresh folder.
JSON_RUNS: dict[str, list[str]] = {
    "apps": ["apps"],
    "backup": ["backup", "--app", "wiki"],
    "benchmark": ["benchmark", "--size", "4", "--threads", "1"],
    "check": ["check"],
    "config check": ["config", "check"],
    "fs-snapshots list": ["fs-snapshots", "list"],
    "fs-snapshots cleanup": ["fs-snapshots", "cleanup", "--dry-run"],
    "plugins list": ["plugins", "list"],
    "db restore": [
        "db",
        "restore",
        "latest",
        "--app",
        "notes",
        "--database",
        "main",
        "--into",
        "T/copy.sqlite3",
    ],
    "diff": ["diff", "latest", "SNAP", "--app", "notes"],
    "find": ["find", "*.py"],
    "forget": ["forget", "--app", "notes", "--keep-last", "5"],
    "init": ["init", "--insecure-test-kdf", "-r", "T/other-repo"],
    "copy": [
        "copy",
        "--from-repo",
        "T/other-repo",
    ],  # after init; CASBACKUP_FROM_PASSWORD: see the walk
    "key list": ["key", "list"],
    "key add": ["key", "add", "--insecure-test-kdf", "--new-password-file", "PWFILE"],
    "key remove": ["key", "remove", "KEY"],
    "ls": ["ls", "latest", "--app", "notes"],
    "migrate": ["migrate", "--dry-run"],
    "prune": ["prune", "--dry-run"],
    "recover": [
        "recover",
        "--app",
        "notes",
        "--target",
        "T/rec",
        "--allow-unverified",
        "--dry-run",
    ],
    "repair index": ["repair", "index"],
    "repair packs": ["repair", "packs", "PACK", "--dry-run"],  # PACK: one of the site's packs
    "repair snapshots": ["repair", "snapshots", "--dry-run"],
    "restore": ["restore", "latest", "--app", "notes", "--target", "T/restored"],
    "snapshots": ["snapshots"],
    "stats": ["stats", "latest", "--app", "notes"],
    "unlock": ["unlock"],
    "verify": ["verify", "--app", "notes"],
    "tag": ["tag", "--add", "pinned", "latest", "--app", "notes"],
    "rewrite": ["rewrite", "--exclude", "*.nothing-matches", "--dry-run"],
    # The web service's accounts, in a state folder ST of their own (passwords on stdin).
    "user add": [
        "user",
        "add",
        "alice",
        "--role",
        "admin",
        "--password-stdin",
        "--state-dir",
        "ST",
    ],
    "user list": ["user", "list", "--state-dir", "ST"],
    "user passwd": ["user", "passwd", "alice", "--password-stdin", "--state-dir", "ST"],
    "token create": ["token", "create", "--user", "alice", "--state-dir", "ST"],
    "token list": ["token", "list", "--state-dir", "ST"],
    "token revoke": ["token", "revoke", "TOKEN", "--state-dir", "ST"],
    "user remove": ["user", "remove", "bob", "--state-dir", "ST"],  # bob is added first
    # Last: the passphrase changes.
    "key passwd": ["key", "passwd", "--insecure-test-kdf", "--new-password-file", "PWFILE"],
}
# Not JSON by nature: dump/cat write the file's own bytes; mount is tested in test_mount.py
# (FUSE) and its --json lines in test_mount_json_status when FUSE is present; serve runs until
# stopped: its own lines are JSON (test_serve_json_lines below), uvicorn's log is uvicorn's.
NOT_JSON = {"dump", "cat", "mount", "serve"}


def test_the_json_walk_covers_every_command() -> None:
    assert every_command_path() - NOT_JSON == set(JSON_RUNS)


@pytest.mark.slow
def test_every_command_prints_json_with_json(site: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "pw").write_text("another passphrase\n")
    snap = json.loads(cli_in(site, "--json", "snapshots", "--app", "notes").out)[0]["id"]
    for name, args in JSON_RUNS.items():
        if name == "key remove":
            keys = json_lines(cli_in(site, "--json", "key", "list").out)[0]
            assert isinstance(keys, list)
            args = ["key", "remove", next(k["id"] for k in keys if not k.get("current"))]
        if name == "user remove":  # not the last admin: a second user to remove
            bob = ["user", "add", "bob", "--role", "viewer", "--password-stdin",
                   "--state-dir", f"{work}/st"]  # fmt: skip
            assert cli_in(site, *bob, input=b"a long password\n").code == 0
        if name == "repair packs":
            pack = next(p.name for p in (site / "repo" / "data").rglob("*") if p.is_file())
            args = [a.replace("PACK", pack) for a in args]
        args = [a.replace("T/", f"{work}/").replace("PWFILE", str(work / "pw")).replace("SNAP", snap)
                .replace("ST", f"{work}/st") for a in args]  # fmt: skip
        if name == "token revoke":
            made = json_lines(
                cli_in(site, "--json", "token", "list", "--state-dir", f"{work}/st").out
            )
            args = [a.replace("TOKEN", made[0][0]["id"]) for a in args]  # type: ignore[index]
        env = {"CASBACKUP_FROM_PASSWORD": PASSWORD} if name == "copy" else {}
        res = cli_in(site, "--json", *args, input=b"a long password\n", **env)
        assert res.code == 0, (name, res.code, res.err)
        assert "Traceback" not in res.err
        assert res.out.strip(), name
        json_lines(res.out)
        for line in res.err.splitlines():  # progress and warnings on stderr are JSON too
            json.loads(line)


def test_unlock_json(site: Path) -> None:
    res = cli_in(site, "--json", "unlock")
    assert res.code == 0
    assert json_lines(res.out) == [
        {"message_type": "unlock", "removed": [], "kept": [], "failed": []}
    ]
    assert cli_in(site, "unlock").out == "0 locks removed\n"


def test_latest_with_app_works_wherever_a_snapshot_is_taken(site: Path) -> None:
    notes = json.loads(cli_in(site, "--json", "snapshots", "--app", "notes").out)
    newest = notes[-1]
    stats = cli_in(site, "--json", "stats", "latest", "--app", "notes")
    assert stats.code == 0, stats.err
    assert json_lines(stats.out)[-1]["scope"] == f"snapshot {newest['short_id']}"  # type: ignore[index]
    # The repository's latest is the wiki's; --app picks the notes' one.
    wiki = cli_in(site, "--json", "stats", "latest")
    assert json_lines(wiki.out)[-1]["scope"] != f"snapshot {newest['short_id']}"  # type: ignore[index]
    diff = cli_in(site, "diff", notes[0]["id"], "latest", "--app", "notes")
    assert diff.code == 0, diff.err
    assert "main.py" in diff.out
    for args in (["ls", "latest", "--app", "notes"], ["dump", "latest:/", "--app", "notes"]):
        res = cli_in(site, *args)
        assert res.code in (0, 2), res.err  # dump of '/' is a usage error, never 'not found'
        assert "no snapshot" not in res.err
    app_all = cli_in(site, "stats", "--app", "notes")
    assert "application notes (2 snapshots)" in app_all.out


def test_recover_dry_run_exits_non_zero_when_the_real_run_would_refuse(
    site: Path, tmp_path: Path
) -> None:
    target = tmp_path / "rec"
    in_the_way = target / str(site / "app").lstrip("/")  # where the source 'app' goes
    in_the_way.mkdir(parents=True)
    (in_the_way / "something").write_text("in the way")
    dry = cli_in(
        site,
        "recover",
        "--app",
        "notes",
        "--target",
        str(target),
        "--allow-unverified",
        "--dry-run",
    )
    assert dry.code == 30, (dry.out, dry.err)
    assert "problem:" in dry.out and "dry run: nothing was changed" in dry.out
    lines = dry.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the recovery cannot run as planned: 1 problem"
    )
    real = cli_in(site, "recover", "--app", "notes", "--target", str(target), "--allow-unverified")
    assert real.code == 30  # the same verdict as the dry run
    doc = json_lines(cli_in(site, "--json", "recover", "--app", "notes", "--target", str(target),
                            "--allow-unverified", "--dry-run").out)[0]  # fmt: skip
    assert doc["problems"]  # type: ignore[index]
    fine = cli_in(site, "recover", "--app", "notes", "--target", str(tmp_path / "new"),
                  "--allow-unverified", "--dry-run")  # fmt: skip
    assert fine.code == 0, fine.err


# ------------------------------------------------------------------ shell completion
def complete(shell: str, words: str, *, cword: int | None = None, **env: str) -> CliResult:
    """Run click's completion protocol as the shell's script does."""
    parts = words.split(" ")
    if shell == "fish":  # fish passes the word being completed, not its index
        extra = {"COMP_WORDS": words, "COMP_CWORD": parts[-1]}
    else:
        extra = {"COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1 if cword is None else cword)}
    return run_cli(env={"_CASBACKUP_COMPLETE": f"{shell}_complete", **extra, **env})


def values(shell: str, out: str) -> list[str]:
    if shell == "zsh":  # type, value, help: three lines each
        lines = out.splitlines()
        return [lines[i + 1] for i in range(0, len(lines) - 2, 3)]
    return [line.split(",", 1)[1].split("\t")[0] for line in out.splitlines()]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_commands_and_options(shell: str) -> None:
    res = complete(shell, "casbackup re")
    assert res.code == 0, res.err
    assert {"recover", "repair", "restore"} <= set(values(shell, res.out))
    res = complete(shell, "casbackup restore --ov")
    assert values(shell, res.out) == ["--overwrite"]


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_of_apps_and_snapshot_ids(shell: str, site: Path) -> None:
    env = {"CASBACKUP_CONFIG": str(site / "casbackup.toml"), "CASBACKUP_PASSWORD": PASSWORD}
    apps = complete(shell, "casbackup backup --app ", **env)
    assert apps.code == 0, apps.err
    assert values(shell, apps.out) == ["notes", "wiki"]
    assert values(shell, complete(shell, "casbackup ls --app w", **env).out) == ["wiki"]
    ids = [s["id"] for s in json.loads(cli_in(site, "--json", "snapshots").out)]
    snaps = complete(shell, "casbackup restore ", **env)
    assert values(shell, snaps.out) == ["latest", *reversed(ids)]
    one = complete(shell, f"casbackup diff {ids[0][:3]}", **env)
    assert ids[0] in values(shell, one.out)
    # Without a passphrase that needs no prompt, ids are not read (and nothing is asked).
    no_pw = complete(shell, "casbackup restore ", CASBACKUP_CONFIG=str(site / "nope.toml"),
                     CASBACKUP_REPO=str(site / "repo"), CASBACKUP_PASSWORD="")  # fmt: skip
    assert no_pw.code == 0 and values(shell, no_pw.out) == ["latest"]


def test_completion_never_breaks_the_shell_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is not toml [")
    res = complete("bash", "casbackup ls --app ", CASBACKUP_CONFIG=str(bad))
    assert res.code == 0 and res.out.strip() == "" and res.err == ""


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    res = run_cli(env={"_CASBACKUP_COMPLETE": f"{shell}_source"})
    assert res.code == 0
    assert "_CASBACKUP_COMPLETE" in res.out and f"{shell}_complete" in res.out


def _shell(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        why = f"{name} is not installed (make sysdeps installs it)"
        if os.environ.get("CI") == "true":  # make test installs it: missing is a failure
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    return found


def _with_casbackup_on_path(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose PATH has a ``casbackup`` that runs this checkout's CLI."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "casbackup").write_text(
        f'#!/bin/sh\nexec {sys.executable} -m casbackup.cli.main "$@"\n'
    )
    (bindir / "casbackup").chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **extra}


def _run_shell(shell: str, script: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run([_shell(shell), "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


# The README's lines, sourced in the real shells. zsh and bash complete through functions
# that the script defines; zsh's _describe/compadd (the completion system's builtins, which
# only work inside a completion widget) are replaced by ones that print what they are given.
BASH = """eval "$(_CASBACKUP_COMPLETE=bash_source casbackup)"
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
  _casbackup_completion casbackup; printf "%s\\n" "${COMPREPLY[@]}"; echo ---; }
"""
ZSH = """compdef() { :; }
eval "$(_CASBACKUP_COMPLETE=zsh_source casbackup)"
_describe() { print -rl -- "${(@P)3}"; }
compadd() { print -rl -- "${(@P)5}"; }
complete_words() { words=("$@"); CURRENT=$#; _casbackup_completion; echo ---; }
"""
FISH = """_CASBACKUP_COMPLETE=fish_source casbackup | source
function complete_words; complete -C "$argv"; echo ---; end
"""


def _complete_in(shell: str, env: dict[str, str], *lines: list[str]) -> list[list[str]]:
    """Each line's completions (values only, descriptions cut), as the real shell gives them."""
    prelude = {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell]
    calls = "\n".join(
        "complete_words " + " ".join(f"'{w}'" if w else "''" for w in words) for words in lines
    )
    out = _run_shell(shell, prelude + calls, env)
    groups: list[list[str]] = [[]]
    for line in out:
        if line == "---":
            groups.append([])
        elif line:
            groups[-1].append(line.split("\t")[0].split(":")[0] if shell != "bash" else line)
    return groups[:-1]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_in_the_real_shell(shell: str, tmp_path: Path) -> None:
    """Commands and options, through the script the README tells users to source."""
    env = _with_casbackup_on_path(tmp_path, CASBACKUP_CONFIG=str(tmp_path / "none.toml"))
    commands, options = _complete_in(shell, env, ["casbackup", "sn"],
                                     ["casbackup", "restore", "--ov"])  # fmt: skip
    assert commands == ["snapshots"]
    assert options == ["--overwrite"]


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_apps_and_snapshot_ids_complete_in_the_real_shell(
    shell: str, site: Path, tmp_path: Path
) -> None:
    env = _with_casbackup_on_path(
        tmp_path, CASBACKUP_CONFIG=str(site / "casbackup.toml"), CASBACKUP_PASSWORD=PASSWORD
    )
    ids = [s["id"] for s in json.loads(cli_in(site, "--json", "snapshots").out)]
    apps, snaps = _complete_in(shell, env, ["casbackup", "backup", "--app", ""],
                               ["casbackup", "restore", ""])  # fmt: skip
    assert sorted(apps) == ["notes", "wiki"]
    assert sorted(snaps) == sorted(["latest", *ids])


def test_serve_json_lines(tmp_path: Path) -> None:
    """serve --json: its own stderr lines (the plain-HTTP warning, where it serves) are JSON."""
    state = str(tmp_path / "state")
    (tmp_path / "casbackup.toml").write_text("version = 1\n")
    env = {"CASBACKUP_CONFIG": str(tmp_path / "casbackup.toml"), "HOME": str(tmp_path)}
    add = run_cli("user", "add", "alice", "--role", "admin", "--password-stdin", "--state-dir",
                  state, env=env, input=b"a long password\n")  # fmt: skip
    assert add.code == 0, add.err
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.cli.main", "--json", "serve", "--listen",
         f"0.0.0.0:{port}", "--insecure-http", "--no-scheduler", "--state-dir", state],
        stderr=subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline(), proc.stderr.readline()]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    warning, serving = (json.loads(line) for line in lines)
    assert warning["message_type"] == "warning" and "plain HTTP" in warning["message"]
    assert serving == {"message_type": "serving", "url": f"http://0.0.0.0:{port}",
                       "state_dir": state}  # fmt: skip
