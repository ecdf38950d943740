"""The plaintext config is authenticated (issue 12, kind 4) and format version 2 (migration)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.crypto.keys import MasterKey
from casbackup.errors import ConfigTampered, FormatError, MigrationRequired, UnsupportedFormat
from casbackup.maintenance.migrate import migrate, plan_migration
from casbackup.repo import config as config_module
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import PASSWORD, TEST_CONFIG_KW, make_repo, open_repo, run_cli
from tests.cli.conftest import assert_one_error


def _edit_config(path: str, **changes: object) -> None:
    name = os.path.join(path, "config")
    with open(name) as f:
        doc = json.load(f)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        elif isinstance(value, dict):
            doc[key].update(value)
        else:
            doc[key] = value
    with open(name, "w") as f:
        json.dump(doc, f)


def make_v1_repo(path: str) -> None:
    config = RepoConfig(version=1, **TEST_CONFIG_KW)
    Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF, config=config).close()


@pytest.fixture
def source(tmp_path) -> str:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(os.urandom(200_000))
    return str(src)


def test_new_repository_is_version_2_with_a_mac(repo_path: str) -> None:
    with open(os.path.join(repo_path, "config")) as f:
        doc = json.load(f)
    assert doc["version"] == FORMAT_VERSION and len(doc["mac"]) == 64
    with open_repo(repo_path) as repo:
        assert repo.writable


def test_issue_example_tiny_chunks_and_no_compression_is_refused(
    repo_path: str, source: str
) -> None:
    """Shrinking the chunk sizes to 64 B and turning compression off: exit 22, everywhere."""
    _edit_config(
        repo_path,
        chunker={"min_size": 64, "avg_size": 256, "max_size": 1024},
        compression="none",
    )
    res = run_cli("backup", source, repo=repo_path)
    assert_one_error(res, 22, "config was changed by someone without the key")
    assert_one_error(run_cli("check", repo=repo_path), 22, "MAC")
    assert_one_error(run_cli("snapshots", repo=repo_path), 22, "MAC")
    with pytest.raises(ConfigTampered):
        open_repo(repo_path)


@pytest.mark.parametrize(
    "change",
    [
        {"pack_size": 1 << 21},
        {"compression_level": 19},
        {"dump_chunker": {"avg_size": 8192}},
        {"id_hash": "blake3-keyed", "mac": "0" * 64},
        {"mac": None},
        {"version": 2},
    ],
    ids=["pack_size", "level", "dump_chunker", "mac", "no-mac", "version"],
)
def test_every_parameter_is_authenticated(repo_path: str, change: dict[str, object]) -> None:
    _edit_config(repo_path, **change)
    with pytest.raises(ConfigTampered):
        open_repo(repo_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compression_level", 1e9),  # the issue's example
        ("compression_level", 10**9),
        ("compression_level", True),
        ("pack_size", 16.0 * 2**20),
        ("pack_size", "16777216"),
        ("extra", 1),
    ],
)
def test_values_are_range_and_type_checked_before_use(
    repo_path: str, field: str, value: object
) -> None:
    _edit_config(repo_path, **{field: value})
    with pytest.raises(FormatError):
        open_repo(repo_path)


def test_cli_out_of_range_level_is_one_line_exit_22(repo_path: str) -> None:
    _edit_config(repo_path, compression_level=1e9)
    assert_one_error(run_cli("snapshots", repo=repo_path), 22, "config")


def test_a_config_with_another_keys_mac_is_refused(repo_path: str) -> None:
    with open_repo(repo_path) as repo:
        forged = repo.config.sign(MasterKey.generate())
    with open(os.path.join(repo_path, "config"), "wb") as f:
        f.write(forged.encode())
    with pytest.raises(ConfigTampered):
        open_repo(repo_path)


def test_old_reader_refuses_version_2(repo_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version 1 reader's check (FORMAT_VERSION = 1) refuses the new config with exit 21."""
    monkeypatch.setattr(config_module, "FORMAT_VERSION", 1)
    with open(os.path.join(repo_path, "config"), "rb") as f:
        data = f.read()
    with pytest.raises(UnsupportedFormat, match="upgrade casbackup") as exc:
        RepoConfig.decode(data)
    assert exc.value.exit_code == 21


def test_version_1_is_read_only_until_migrated(tmp_path, source: str) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "v1")
    make_v1_repo(path)
    with open_repo(path) as repo:
        assert not repo.writable
        with pytest.raises(MigrationRequired, match="casbackup migrate"):
            repo.save_file_object("snapshots", Kind.SNAPSHOT, b"{}")
        with pytest.raises(MigrationRequired):
            repo.lock(exclusive=True)
    assert_one_error(run_cli("backup", source, repo=path), 21, "casbackup migrate")
    assert run_cli("snapshots", repo=path).code == 0
    res = run_cli("check", repo=path)
    assert res.code == 0 and "not authenticated: run 'casbackup migrate'" in res.err
    assert_one_error(run_cli("forget", "--keep-last", "1", repo=path), 21, "migrate")
    res = run_cli("migrate", "--dry-run", repo=path)
    assert res.code == 0 and "would upgrade" in res.out
    res = run_cli("migrate", "--accept-settings", repo=path)
    assert res.code == 0, res.err
    assert f"from format version 1 to {FORMAT_VERSION}" in res.out
    assert run_cli("backup", source, repo=path).code == 0
    assert run_cli("check", repo=path).code == 0
    assert f"already at format version {FORMAT_VERSION}" in run_cli("migrate", repo=path).out


def test_migrate_names_unusual_parameters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "v1")
    make_v1_repo(path)
    _edit_config(path, compression="none")
    with open_repo(path) as repo:
        plan = plan_migration(repo)
        assert plan.needed and any("compression" in u for u in plan.unusual)
    res = run_cli("migrate", "--dry-run", repo=path)
    assert res.code == 0 and "compression is none" in res.err
    assert "would be authenticated" in res.err and "now" not in res.err, res.err  # not yet
    # Named for the user to confirm, as repo_format.md says: not taken silently.
    res = run_cli("migrate", repo=path)
    assert_one_error(res, 2, "compression is none", "--accept-settings")
    with open_repo(path) as repo:
        assert repo.config.version == 1
    res = run_cli("migrate", "--accept-settings", repo=path)
    assert res.code == 0 and "compression is none" in res.err
    assert "now authenticated" in res.err


def test_rollback_to_version_1_after_migration_is_tampering(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "v1")
    make_v1_repo(path)
    with open(os.path.join(path, "config"), "rb") as f:
        old = f.read()
    with open_repo(path) as repo:
        migrate(repo, accept_unusual=True)
    with open(os.path.join(path, "config"), "wb") as f:
        f.write(old)  # an attacker puts the unauthenticated version back
    with pytest.raises(ConfigTampered, match="rolled back"):
        open_repo(path)
    assert_one_error(run_cli("snapshots", repo=path), 22, "rolled back")


_KILL_AT_RENAME = """
import os, signal
_replace = os.replace
def _kill_on_config(src, dst, *a, **k):
    if str(dst) == "config" or str(dst).endswith("/config"):  # by folder fd or by path
        if {after}:
            _replace(src, dst, *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *a, **k)
os.replace = _kill_on_config
from casbackup.cli.main import main
main()
"""


@pytest.mark.parametrize("after", [False, True], ids=["before-rename", "after-rename"])
def test_migration_killed_leaves_a_repository_that_opens(
    tmp_path, source: str, after: bool
) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "v1")
    make_v1_repo(path)
    assert run_cli("backup", source, repo=path).code == 21
    with open_repo(path) as repo:
        assert repo.config.version == 1
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILL_AT_RENAME.format(after=after),
            "-r",
            path,
            "migrate",
            "--accept-settings",
        ],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    with open_repo(path) as repo:
        assert repo.config.version == (FORMAT_VERSION if after else 1)
    # The killed run's lock names a dead process on this host: stale, so no unlock needed.
    res = run_cli("migrate", "--accept-settings", repo=path)
    assert res.code == 0, res.err
    assert run_cli("backup", source, repo=path).code == 0
    res = run_cli("check", repo=path)
    assert res.code == 0, res.err


def test_make_repo_fixture_is_the_current_version() -> None:
    from casbackup.store.memory import MemoryBackend

    with make_repo(MemoryBackend()) as repo:
        assert repo.config.version == FORMAT_VERSION and repo.config.mac


def test_check_reads_the_config_again(repo_path: str) -> None:
    from casbackup.verify.check import CheckOptions, check

    with open_repo(repo_path) as repo:
        assert check(repo, CheckOptions()).ok
        _edit_config(repo_path, compression="none")  # changed after opening
        report = check(repo, CheckOptions())
        assert any(e.startswith("config:") and "MAC" in e for e in report.errors)


def test_deeply_nested_config_and_key_file_are_one_line(repo_path: str) -> None:
    """Kind 7 in the plaintext objects (no key needed to plant them): 30,000 nested JSON
    arrays must not reach the recursion limit as a traceback."""
    import blake3

    from tests.cli.conftest import assert_one_error as one_error

    nested = b"[" * 30_000 + b"]" * 30_000
    with open(os.path.join(repo_path, "keys", blake3.blake3(nested).hexdigest()), "wb") as f:
        f.write(nested)
    res = run_cli("key", "list", repo=repo_path)
    assert res.code == 0 and "key file is not valid JSON" in res.out, res.err
    with open(os.path.join(repo_path, "config"), "wb") as f:
        f.write(nested)
    one_error(run_cli("snapshots", repo=repo_path), 22, "config is not valid JSON")


def test_two_migrations_at_once_end_in_one_upgrade_and_no_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Two 'casbackup migrate' at once: the second opened the old config, took the lock after
    # the first released it and found the config changed: exit 22, "config changed while
    # migrating", an integrity alarm for a race nothing was wrong in.
    path = str(tmp_path / "v2")
    Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF,
                    config=RepoConfig(version=2, **TEST_CONFIG_KW)).close()  # fmt: skip
    with open_repo(path) as late, open_repo(path) as early:
        assert migrate(early, accept_unusual=True).needed
        plan = migrate(late, accept_unusual=True)
        assert not plan.needed and plan.from_version == FORMAT_VERSION
        assert late.config.version == FORMAT_VERSION and late.writable
    with open(os.path.join(path, "config")) as f:
        assert json.load(f)["version"] == FORMAT_VERSION
    # Anything else changed meanwhile is still refused.
    make_v1_repo(str(tmp_path / "v1"))
    with open_repo(str(tmp_path / "v1")) as repo:
        _edit_config(str(tmp_path / "v1"), compression="none")
        with pytest.raises(ConfigTampered, match="changed while migrating"):
            migrate(repo, accept_unusual=True)
