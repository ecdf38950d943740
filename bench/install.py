"""Unattended setup on Debian as root: restic and time from apt, BorgBackup 1.4 in its own venv.

Each step is skipped when its result is already there. A step that fails leaves that tool
unavailable (with the reason) instead of stopping the benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BORG_SPEC = "borgbackup>=1.4,<1.5"  # pip picks the newest 1.4.x
BORG_BUILD_DEPS = [
    "liblz4-dev",
    "libzstd-dev",
    "libxxhash-dev",
    "libacl1-dev",
    "libssl-dev",
    "pkg-config",
    "python3-dev",  # Python.h when the interpreter is Debian's
    "gcc",
]


def compile_bytecode() -> None:
    """Compile casbackup's modules, as ``pip install`` does for an installed package.

    The working tree is installed editable; where PYTHONDONTWRITEBYTECODE is set (this
    workplace sets it) every command would compile every module from source first,
    about 0.2 s per run that no installed copy pays.
    """
    package = Path(__file__).resolve().parent.parent / "casbackup"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=False)


def _log(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def _missing_debs(packages: list[str]) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
    ).stdout
    installed = {ln.split()[0] for ln in out.splitlines() if ln.split()[1:2] == ["ii"]}
    return [p for p in packages if p not in installed]


def apt_install(packages: list[str], log: Path) -> str | None:
    """Install the missing ``packages``; run ``apt-get update`` once if the first try fails.
    Returns an error message, or None on success."""
    missing = _missing_debs(packages) if shutil.which("dpkg-query") else packages
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"not root: cannot apt-get install {' '.join(missing)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *missing]
    _log(f"apt-get install {' '.join(missing)}")
    with open(log, "a") as f:
        if subprocess.run(cmd, stdout=f, stderr=f, env=env).returncode == 0:
            return None
        _log("apt-get update")
        subprocess.run(["apt-get", "update", "-q"], stdout=f, stderr=f, env=env)
        if subprocess.run(cmd, stdout=f, stderr=f, env=env).returncode == 0:
            return None
    return f"apt-get install {' '.join(missing)} failed (see {log})"


def ensure_time(log: Path) -> str | None:
    if os.access("/usr/bin/time", os.X_OK):
        return None
    return apt_install(["time"], log)


def ensure_restic(log: Path) -> tuple[str | None, str | None]:
    """(path to restic, error)."""
    if not shutil.which("restic"):
        err = apt_install(["restic"], log)
        if err:
            return None, err
    path = shutil.which("restic")
    return (path, None) if path else (None, "restic not on PATH after install")


def ensure_borg(venv: Path, log: Path) -> tuple[str | None, str | None]:
    """(path to borg, error). Builds BorgBackup from PyPI into ``venv``."""
    borg = venv / "bin" / "borg"
    if borg.exists():
        ok = subprocess.run([str(borg), "--version"], capture_output=True, text=True)
        if ok.returncode == 0 and ok.stdout.split()[-1].startswith("1.4."):
            return str(borg), None
        shutil.rmtree(venv)
    err = apt_install(BORG_BUILD_DEPS, log)
    if err:
        return None, err
    _log(f"building {BORG_SPEC} into {venv} (a few minutes)")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "--upgrade", "pip", "wheel"],
        [str(venv / "bin" / "pip"), "install", "-q", BORG_SPEC],
    ]
    with open(log, "a") as f:
        for step in steps:
            if subprocess.run(step, stdout=f, stderr=f).returncode != 0:
                return None, f"{' '.join(step[:3])} failed (see {log})"
    return str(borg), None


def setup(workdir: Path) -> dict[str, object]:
    """Install what is missing; returns {"restic": path|None, "borg": path|None, "errors": {...}}."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "setup.log"
    errors: dict[str, str] = {}
    if err := ensure_time(log):
        errors["time"] = err
    restic, err = ensure_restic(log)
    if err:
        errors["restic"] = err
    borg, err = ensure_borg(workdir / "borg-venv", log)
    if err:
        errors["borg"] = err
    for k, v in errors.items():
        _log(f"{k}: {v}")
    return {"restic": restic, "borg": borg, "errors": errors}
