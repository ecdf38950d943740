"""The CLI imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import casbackup.cli as package
from casbackup.cli.main import COMMAND_MODULES


def test_command_map_names_every_command_of_every_module() -> None:
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"casbackup.cli.{info.name}")
            for command in module.COMMANDS:
                found[command.name] = info.name
    assert found == COMMAND_MODULES


def test_running_one_command_imports_only_its_module() -> None:
    code = (
        "import sys\n"
        "from casbackup.cli.main import main\n"
        "try:\n"
        "    main(['init', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('casbackup.cli.cmd_')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['casbackup.cli.cmd_init']"


def test_top_level_help_lists_every_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for name in COMMAND_MODULES:
        assert f"  {name} " in out.stdout or f"  {name}\n" in out.stdout, name


def test_backup_of_paths_imports_no_config_or_application_machinery(tmp_path, repo_path) -> None:  # type: ignore[no-untyped-def]
    """A backup given its PATHS, repository and passphrase never needs the config, the
    database engines, file-system snapshots or the installed plugins' metadata: those
    imports were about 20-35 ms of its start (bench/RESULTS.md, issue 17 re-backups)."""
    import os

    from casbackup.testing.fixtures import PASSWORD

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    code = (
        "import sys\n"
        "from casbackup.cli.main import main\n"
        f"argv = ['-q', '-r', {repo_path!r}, 'backup', {str(tmp_path / 'src')!r}]\n"
        "try:\n"
        "    main(argv)\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = ('casbackup.config', 'casbackup.archiver.application', 'casbackup.fssnap',\n"
        "         'casbackup.engines.process', 'importlib.metadata')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_starts_in_a_fresh_interpreter() -> None:
    """The suite's run_cli forks a process that imported every command module already
    (casbackup/testing/zygote.py): a command whose module only imports after another's (an
    import cycle, a name another module defines on import) would pass there and fail for
    users. Each command's --help, here, starts a plain interpreter."""
    failed = {}
    for name in sorted(COMMAND_MODULES):
        out = subprocess.run(
            [sys.executable, "-m", "casbackup.cli.main", name, "--help"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0 or "Usage:" not in out.stdout:
            failed[name] = (out.returncode, out.stderr[-500:])
    assert not failed, failed
