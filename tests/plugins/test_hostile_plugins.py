"""Third-party plugins that crash or lie: one line and the documented exit code, never a
traceback, and a notifier can never end the backup.

Found with a real CLI and a plugin package on PYTHONPATH: a backend opener that raised, one
that returned something that is not a backend, and a backend whose get raised or returned
None each printed a traceback; a notifier whose send raised SystemExit ended `backup --app`
with exit 5 before it began, without a word.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from casbackup.testing.fixtures import run_cli

ENTRY_POINTS = """\
[casbackup.backends]
hboom = hostileplug:open_boom
hliar = hostileplug:open_liar
hflaky = hostileplug:open_flaky

[casbackup.engines]
hdumpboom = hostileplug:DumpBoom
hmidway = hostileplug:Midway
hnoinfo = hostileplug:NoInfo

[casbackup.notifiers]
hexit = hostileplug:ExitingNotifier
hexitimport = hostileexit:Anything
"""

MODULE = """
from casbackup.store.local import LocalBackend


def open_boom(location, settings):
    raise RuntimeError("cannot reach the cloud")


def open_liar(location, settings):
    return object()


class Flaky:
    # A local folder that misbehaves when told to by a marker file beside it.
    def __init__(self, root):
        self.inner = LocalBackend(root)
        self.location = root
        self.marker = root + ".mode"

    def _mode(self):
        try:
            return open(self.marker).read().strip()
        except FileNotFoundError:
            return ""

    def get(self, name, offset=0, length=None):
        mode = self._mode()
        if mode == "raise" and name.startswith("snapshots/"):
            raise KeyError(name)
        if mode == "none" and name.startswith("snapshots/"):
            return None
        return self.inner.get(name, offset, length)

    def list(self, prefix):
        if self._mode() == "list":
            yield ("snapshots/", "big")
            return
        yield from self.inner.list(prefix)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def put(self, name, data): self.inner.put(name, data)
    def delete(self, name): self.inner.delete(name)
    def stat(self, name): return self.inner.stat(name)
    def exists(self, name): return self.inner.exists(name)
    def close(self): self.inner.close()


def open_flaky(location, settings):
    return Flaky(location.removeprefix("hflaky:"))


import io


class DumpBoom:
    name = "hdumpboom"
    file_extension = "dump"

    def check_available(self):
        pass

    def dump(self, spec):
        raise RuntimeError("dump exploded")


class _Stream(io.RawIOBase):
    def __init__(self, fail_at):
        self.fail_at, self.sent = fail_at, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.fail_at is not None and self.sent >= self.fail_at:
            raise ConnectionResetError("server went away")
        if self.sent >= 3:
            return 0
        b[:1] = b"x"
        self.sent += 1
        return 1

    def finish(self):
        return None


class Midway(DumpBoom):
    name = "hmidway"

    def dump(self, spec):
        return _Stream(2)


class NoInfo(DumpBoom):
    name = "hnoinfo"

    def dump(self, spec):
        return _Stream(None)


class ExitingNotifier:
    uses_network = False

    def __init__(self, config):
        pass

    def send(self, event):
        raise SystemExit(5)
"""


def _package(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "hostileplug.py").write_text(textwrap.dedent(MODULE))
    (root / "hostileexit.py").write_text("import sys\nsys.exit(7)\n")
    info = root / "hostile_cb-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-cb\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    return root


def _env(tmp_path: Path, extra: str = "") -> dict[str, str]:
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text("[plugins]\nenabled = true\n" + extra)
    return {"PYTHONPATH": str(_package(tmp_path / "site")), "CASBACKUP_CONFIG": str(cfg)}


def _one_line(res: object, code: int, fragment: str) -> None:
    err = res.err  # type: ignore[attr-defined]
    assert res.code == code, err  # type: ignore[attr-defined]
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert fragment in err, err


def test_backend_opener_that_raises_or_lies(tmp_path: Path) -> None:
    env = _env(tmp_path)
    res = run_cli("snapshots", repo="hboom:x", env=env)
    _one_line(res, 25, "storage plugin 'hboom' failed to open hboom:x: RuntimeError: cannot")
    res = run_cli("init", "--insecure-test-kdf", repo="hliar:x", env=env)
    _one_line(res, 25, "storage plugin 'hliar' returned object, not a backend (missing: put")


def test_backend_that_raises_or_lies_mid_command(tmp_path: Path) -> None:
    env = _env(tmp_path)
    folder = tmp_path / "store"
    repo = f"hflaky:{folder}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    for args in (("init", "--insecure-test-kdf"), ("backup", str(src))):
        assert run_cli(*args, repo=repo, env=env).code == 0
    mode = Path(str(folder) + ".mode")
    # A snapshot that cannot be read is a warning in a listing (hostile storage).
    mode.write_text("raise")
    res = run_cli("snapshots", repo=repo, env=env)
    _one_line(res, 0, "storage plugin 'hflaky' failed to get snapshots/")
    assert "KeyError" in res.err
    mode.write_text("none")
    res = run_cli("snapshots", repo=repo, env=env)
    _one_line(res, 0, "returned NoneType")
    mode.write_text("list")
    res = run_cli("snapshots", repo=repo, env=env)
    _one_line(res, 25, "storage plugin 'hflaky': list ")
    mode.unlink()
    res = run_cli("check", repo=repo, env=env)
    assert res.code == 0, res.err  # nothing stored was harmed


def test_notifier_that_exits_does_not_end_the_backup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    app = (
        f'[repository]\nlocation = "{tmp_path / "repo"}"\n'
        f'[[applications]]\nname = "a"\nsources = ["{src}"]\n'
        '[[applications.notify]]\ntype = "hexit"\non = ["start", "success"]\n'
    )
    env = _env(tmp_path, app)
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    res = run_cli("backup", "--app", "a", env=env)
    assert res.code == 0, res
    assert "notifier hexit failed for event start: SystemExit: 5" in res.err, res.err
    assert "snapshot" in res.out and "saved" in res.out, res.out


def test_plugin_that_exits_on_import_is_listed_as_broken(tmp_path: Path) -> None:
    """`plugins list` ended with exit 7 and no output: the import's SystemExit went through."""
    import json

    res = run_cli("--json", "plugins", "list", "--kind", "notifier", env=_env(tmp_path))
    assert res.code == 0, res
    by_name = {p["name"]: p for p in json.loads(res.out)["plugins"]}
    assert by_name["hexitimport"]["reason"] == "failed to load: SystemExit: 7"
    assert by_name["hexit"]["enabled"] and by_name["command"]["enabled"]


def test_engine_plugin_that_raises_or_lies_fails_the_backup_in_one_line(tmp_path: Path) -> None:
    """Each printed a traceback: dump() raising, its stream failing half-way, finish()
    returning None. Now exit 27 and no snapshot, as for a failed dump tool."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    apps = "".join(
        f'[[applications]]\nname = "{e}"\nsources = ["{src}"]\n'
        f'[[applications.databases]]\nname = "d"\nengine = "{e}"\ndatabase = "x"\n'
        for e in ("hdumpboom", "hmidway", "hnoinfo")
    )
    env = _env(tmp_path, f'[repository]\nlocation = "{tmp_path / "repo"}"\n' + apps)
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    expected = {
        "hdumpboom": "failed to dump 'd': RuntimeError: dump exploded",
        "hmidway": "failed to dump 'd': ConnectionResetError: server went away",
        "hnoinfo": "its stream's finish() returned NoneType, not a DumpInfo",
    }
    for engine, fragment in expected.items():
        res = run_cli("backup", "--app", engine, env=env)
        assert res.code == 27 and "Traceback" not in res.err, res
        last = res.err.strip().splitlines()[-1]
        assert last.startswith(f"error: backup of application {engine!r} failed, no snapshot")
        assert f"database engine plugin {engine!r}" in last and fragment in last, last
    assert run_cli("snapshots", env=env).out.strip().endswith("0 snapshots")
