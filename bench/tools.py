"""One adapter per backup tool: the exact command lines for init, backup, restore, check.

Every tool runs with encryption on, its passphrase from the environment, and its cache/config in
a folder next to the repository (``Repo.home``), so each fresh repository also starts with a fresh
cache and nothing leaks between runs or into ``~``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Command, run_plain

PASSWORD = "bench-passphrase-not-secret"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Repo:
    tool: str
    root: Path  # holds repo/ and home/

    @property
    def path(self) -> Path:
        return self.root / "repo"

    @property
    def home(self) -> Path:
        return self.root / "home"

    backups: int = 0  # successful backups so far (names borg archives, picks --type)


class Tool(ABC):
    name: str

    @abstractmethod
    def env(self, repo: Repo) -> dict[str, str]: ...

    @abstractmethod
    def init(self, repo: Repo) -> Command: ...

    @abstractmethod
    def backup(self, repo: Repo, src: Path) -> Command:
        """A full backup when ``repo.backups == 0``, otherwise incremental to the previous one."""

    @abstractmethod
    def restore(self, repo: Repo, target: Path) -> Command:
        """Restore the latest snapshot into the empty folder ``target``."""

    @abstractmethod
    def check(self, repo: Repo) -> Command:
        """A full check that reads and verifies every stored byte."""

    @abstractmethod
    def snapshots(self, repo: Repo) -> Command: ...

    @abstractmethod
    def version(self) -> str: ...

    def count_snapshots(self, repo: Repo) -> int | None:
        """Number of snapshots the tool lists, or None if it could not be read."""
        for cmd in (self.snapshots(repo), self.snapshots_fallback(repo)):
            if cmd is None:
                continue
            try:
                proc = run_plain(cmd, timeout=600)
                data = json.loads(proc.stdout)
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
            if isinstance(data, dict):
                data = data.get("archives", data.get("snapshots"))
            if isinstance(data, list):
                return len(data)
        return None

    def snapshots_fallback(self, repo: Repo) -> Command | None:
        """Another way to list snapshots as JSON, tried when ``snapshots`` gives none."""
        return None

    def _cmd(self, repo: Repo, argv: list[str], cwd: Path | None = None) -> Command:
        return Command(argv, self.env(repo), cwd)


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable: {e}"
    text = (p.stdout or p.stderr).strip()
    if p.returncode != 0:
        return f"unavailable: {text.splitlines()[-1] if text else f'exit {p.returncode}'}"
    return text.splitlines()[0] if text else "unknown"


class Restic(Tool):
    """restic from Debian; repository format 2, compression auto."""

    name = "restic"

    def __init__(self, binary: str = "restic") -> None:
        self.bin = binary

    def env(self, repo: Repo) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(repo.home / "cache"),
            "RESTIC_REPOSITORY": str(repo.path),
        }

    def init(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "init", "--repository-version", "2"])

    def backup(self, repo: Repo, src: Path) -> Command:
        # Fixed --host so that restic picks the previous snapshot as parent (host + paths).
        argv = [self.bin, "backup", "--compression", "auto", "--host", "bench", str(src)]
        return self._cmd(repo, argv)

    def restore(self, repo: Repo, target: Path) -> Command:
        return self._cmd(repo, [self.bin, "restore", "latest", "--target", str(target)])

    def check(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "check", "--read-data"])

    def snapshots(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "snapshots", "--json"])

    def version(self) -> str:
        return _first_line([self.bin, "version"])


class Borg(Tool):
    """BorgBackup 1.4 from PyPI in its own venv; repokey(-blake2), zstd level 3."""

    name = "borg"

    def __init__(self, binary: str) -> None:
        self.bin = binary
        # borg's docs: repokey (HMAC-SHA256) is the faster choice on CPUs with SHA extensions,
        # repokey-blake2 elsewhere.
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        self.encryption = "repokey" if " sha_ni" in flags else "repokey-blake2"

    def env(self, repo: Repo) -> dict[str, str]:
        return {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(repo.home),
            "BORG_REPO": str(repo.path),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
            "BORG_DISPLAY_PASSPHRASE": "no",
        }

    def init(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "init", "--encryption", self.encryption, str(repo.path)])

    def backup(self, repo: Repo, src: Path) -> Command:
        archive = f"{repo.path}::snap{repo.backups + 1}"
        return self._cmd(repo, [self.bin, "create", "--compression", "zstd,3", archive, str(src)])

    def restore(self, repo: Repo, target: Path) -> Command:
        # borg extracts into the current directory; archive paths are the source path without "/".
        return self._cmd(repo, [self.bin, "extract", f"{repo.path}::snap{repo.backups}"], target)

    def check(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "check", "--verify-data", str(repo.path)])

    def snapshots(self, repo: Repo) -> Command:
        return self._cmd(repo, [self.bin, "list", "--json", str(repo.path)])

    def version(self) -> str:
        return _first_line([self.bin, "--version"]) + f" ({self.encryption})"


class Casbackup(Tool):
    """casbackup from the working tree (the project venv's console script)."""

    name = "casbackup"

    def __init__(self) -> None:
        script = Path(sys.executable).parent / "casbackup"
        venv_script = PROJECT_ROOT / ".venv" / "bin" / "casbackup"
        if script.exists():
            self.base = [str(script)]
        elif venv_script.exists():
            self.base = [str(venv_script)]
        else:
            self.base = [sys.executable, "-m", "casbackup.cli.main"]
        self.python = (
            str(Path(self.base[0]).parent / "python") if len(self.base) == 1 else sys.executable
        )

    def env(self, repo: Repo) -> dict[str, str]:
        return {
            "CASBACKUP_PASSWORD": PASSWORD,
            "XDG_CACHE_HOME": str(repo.home / "cache"),
            "XDG_CONFIG_HOME": str(repo.home / "config"),
        }

    def _r(self, repo: Repo, *args: str, cwd: Path | None = None) -> Command:
        return self._cmd(repo, [*self.base, "-r", str(repo.path), *args], cwd)

    def init(self, repo: Repo) -> Command:
        return self._r(repo, "init")

    def backup(self, repo: Repo, src: Path) -> Command:
        kind = "full" if repo.backups == 0 else "incremental"
        return self._r(repo, "backup", "--type", kind, str(src))

    def restore(self, repo: Repo, target: Path) -> Command:
        return self._r(repo, "restore", "latest", "--target", str(target))

    def check(self, repo: Repo) -> Command:
        return self._r(repo, "check", "--read-data")

    def snapshots(self, repo: Repo) -> Command:
        return self._r(repo, "snapshots", "--json")

    def snapshots_fallback(self, repo: Repo) -> Command | None:
        # The CLI as built so far takes --json as a global option.
        return self._cmd(repo, [*self.base, "-r", str(repo.path), "--json", "snapshots"])

    def version(self) -> str:
        return _first_line([*self.base, "--version"])

    def synth_index_missing(self) -> str | None:
        """Why scenario 9 cannot run, or None when ``casbackup.testing.synth_index`` exists."""
        code = "import importlib.util as u; print(u.find_spec('casbackup.testing.synth_index'))"
        try:
            out = subprocess.run(
                [self.python, "-c", code], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot run {self.python}: {e}"
        if out.returncode != 0 or out.stdout.strip() in ("", "None"):
            return "casbackup.testing.synth_index is not there yet"
        return None


def prepare_large_index(repo: Repo, n: int, timeout: float = 7200) -> str | None:
    """Hook for scenario 9: fill ``repo``'s chunk index with ``n`` synthetic entries by calling
    ``python -m casbackup.testing.synth_index REPO N`` (untimed). Returns an error or None."""
    cb = Casbackup()
    argv = [cb.python, "-m", "casbackup.testing.synth_index", str(repo.path), str(n)]
    try:
        proc = run_plain(Command(argv, cb.env(repo)), timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:.0f} s"
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"
    return None


def locate_restore(target: Path, src: Path) -> Path:
    """Where a restore of ``src`` landed inside ``target``: restic and borg keep the absolute path
    (``target/<src without leading />``); a tool may also restore ``src``'s basename or contents."""
    for cand in (target / str(src).lstrip("/"), target / src.name):
        if cand.is_dir():
            return cand
    return target
