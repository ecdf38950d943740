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
