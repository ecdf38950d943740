"""Key files set their own cost (issue 12, kind 3): caps, last-used first, a bound on tries."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from casbackup.crypto import keyfile
from casbackup.crypto.keyfile import WEAK_KDF, KdfLimit, KdfParams, wrap_key
from casbackup.crypto.keys import MasterKey
from casbackup.errors import FormatError, UsageError, WrongPassword
from casbackup.repo.ids import file_id
from casbackup.store.base import Backend
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo


@pytest.fixture
def derives(monkeypatch: pytest.MonkeyPatch) -> list[KdfParams]:
    """Every Argon2 run, by its parameters (the real derivation still runs)."""
    calls: list[KdfParams] = []
    real = KdfParams.derive

    def spy(self: KdfParams, passphrase: bytes, salt: bytes) -> bytes:
        calls.append(self)
        return real(self, passphrase, salt)

    monkeypatch.setattr(keyfile.KdfParams, "derive", spy)
    return calls


def _plant(backend: Backend, kdf: KdfParams, *, before: str | None = None) -> str:
    """A key file for another passphrase, named by its hash; with ``before``, one whose name
    sorts before that id (so that trying key files in name order meets it first)."""
    repo_id = bytes.fromhex(json.loads(backend.get("config"))["id"])
    for _ in range(10_000):
        doc = json.loads(wrap_key(MasterKey.generate(), b"attacker", repo_id, WEAK_KDF))
        # Written as is: an attacker never runs the KDF it asks others to run.
        doc.update(memory_kib=kdf.memory_kib, iterations=kdf.iterations, lanes=kdf.lanes)
        data = json.dumps(doc).encode()
        kid = file_id(data)
        if before is None or kid < before:
            backend.put(f"keys/{kid}", data)
            return kid
    raise AssertionError("unreachable")


def _key_id(backend: MemoryBackend) -> str:
    (name,) = [n for n, _ in backend.list("keys/")]
    return name.rsplit("/", 1)[1]


def test_default_cost_is_rfc9106_second_option() -> None:
    kdf = KdfParams()
    assert kdf.memory_kib >= 64 * 1024 and kdf.iterations >= 3 and kdf.lanes == 4
    assert kdf.describe() == "Argon2id 64 MiB x 3 passes, 4 lanes"
    assert KdfLimit().allows(kdf)


def test_planted_costly_key_file_never_runs(derives: list[KdfParams]) -> None:
    """The issue's example: Argon2id at 4 GiB and 100 passes sorting first."""
    backend = MemoryBackend()
    make_repo(backend).close()
    _plant(backend, KdfParams(memory_kib=4 << 20, iterations=100, lanes=4), before=_key_id(backend))
    # A new client (no local record): name order puts the planted file first.
    derives.clear()
    open_repo(backend).close()
    with pytest.raises(WrongPassword, match="1 damaged key files skipped"):
        open_repo(backend, "wrong")
    assert derives and all(k.memory_kib <= 1 << 20 and k.iterations <= 10 for k in derives), derives


def test_only_costly_key_file_names_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    with open_repo(backend) as repo:
        repo.add_key(b"slow", KdfParams(memory_kib=8192, iterations=11, lanes=1))
    with pytest.raises(WrongPassword):
        open_repo(backend, "slow")  # over the 10-pass cap: skipped, so nothing opens
    monkeypatch.setenv("CASBACKUP_KDF_LIMIT", "1024:11:16")
    open_repo(backend, "slow").close()
    for bad in ("lots", "1024:11", "²:1:1", "0:1:1"):
        monkeypatch.setenv("CASBACKUP_KDF_LIMIT", bad)
        with pytest.raises(UsageError, match="MEMORY_MIB:PASSES:LANES"):
            open_repo(backend, "slow")
    monkeypatch.delenv("CASBACKUP_KDF_LIMIT")
    for bad in ("0", "²", "x"):
        monkeypatch.setenv("CASBACKUP_KEY_TRIES", bad)
        with pytest.raises(UsageError, match="CASBACKUP_KEY_TRIES"):
            open_repo(backend, "slow")


def test_only_key_over_the_cap_is_reported_with_the_variable() -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    (name,) = [n for n, _ in backend.list("keys/")]
    doc = json.loads(backend.get(name))
    doc["iterations"] = 50
    data = json.dumps(doc).encode()
    backend.delete(name)
    backend.put(f"keys/{file_id(data)}", data)
    with pytest.raises(FormatError, match="CASBACKUP_KDF_LIMIT") as exc:
        open_repo(backend)
    assert "50 passes" in str(exc.value)


def test_key_that_opened_last_is_tried_first(derives: list[KdfParams]) -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    mine = _key_id(backend)
    for _ in range(3):
        _plant(backend, WEAK_KDF, before=mine)  # other passphrases' key files, sorting first
    derives.clear()
    open_repo(backend).close()
    assert len(derives) == 1  # the key file init wrote was remembered
    shutil.rmtree(open_repo(backend).state.folder)  # a client that never opened it
    open_repo(backend).close()  # learns which key file opens it
    derives.clear()
    with open_repo(backend) as repo:
        assert repo.key_name == f"keys/{mine}"
    assert len(derives) == 1
    state = open_repo(backend).state
    assert state.doc.last_key == mine
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state.folder).st_mode) == 0o700


def test_costlier_key_files_are_tried_after_cheaper_ones(derives: list[KdfParams]) -> None:
    """Planted key files within the limit (up to 1 GiB x 10 passes: 18 s of Argon2 each)
    whose names sort first: a new client (a rebuilt machine recovering) ran every one of
    them before the real key file. The cheapest are tried first now."""
    backend = MemoryBackend()
    make_repo(backend).close()
    mine = _key_id(backend)
    costly = KdfParams(memory_kib=16384, iterations=2, lanes=1)  # dearer than WEAK_KDF
    for _ in range(3):
        _plant(backend, costly, before=mine)
    shutil.rmtree(open_repo(backend).state.folder)  # a client that never opened it
    derives.clear()
    with open_repo(backend) as repo:
        assert repo.key_name == f"keys/{mine}"
    assert derives == [WEAK_KDF]
    shutil.rmtree(repo.state.folder)
    derives.clear()
    with pytest.raises(WrongPassword):
        open_repo(backend, "wrong")
    assert derives == [WEAK_KDF, costly, costly, costly]


def test_bounded_number_of_key_files_tried(
    derives: list[KdfParams], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's example: hundreds of planted key files at the normal cost."""
    backend = MemoryBackend()
    make_repo(backend).close()
    mine = _key_id(backend)
    for _ in range(25):
        _plant(backend, WEAK_KDF)
    derives.clear()
    with pytest.raises(WrongPassword, match="CASBACKUP_KEY_TRIES=26") as exc:
        open_repo(backend, "wrong")
    assert len(derives) == 20
    assert "CASBACKUP_KEY_FILE" in str(exc.value)
    derives.clear()
    monkeypatch.setenv("CASBACKUP_KEY_TRIES", "100")
    with pytest.raises(WrongPassword) as exc:
        open_repo(backend, "wrong")
    assert len(derives) == 26 and "not tried" not in str(exc.value)
    monkeypatch.delenv("CASBACKUP_KEY_TRIES")
    derives.clear()
    monkeypatch.setenv("CASBACKUP_KEY_FILE", mine[:10])
    open_repo(backend).close()
    assert len(derives) == 1


def test_oversized_key_file_is_not_read() -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    big = b" " * (100 * 1024)
    backend.put(f"keys/{file_id(big)}", big)
    open_repo(backend).close()
    with pytest.raises(WrongPassword, match="1 damaged key files skipped"):
        open_repo(backend, "wrong")


def test_key_file_not_matching_its_name_is_damage() -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    mine = _key_id(backend)
    backend.put("keys/" + "0" * 64, backend.get(f"keys/{mine}"))
    backend.delete(f"keys/{mine}")
    with pytest.raises(FormatError, match="does not match its name"):
        open_repo(backend, PASSWORD)


def test_key_list_shows_each_cost(repo_path: str) -> None:
    from casbackup.testing.fixtures import run_cli

    with open_repo(repo_path) as repo:
        repo.add_key(b"other", KdfParams(memory_kib=8192, iterations=12, lanes=1))
    res = run_cli("key", "list", repo=repo_path)
    assert res.code == 0, res.err
    assert "Argon2id 8 MiB x 1 passes, 1 lanes" in res.out
    assert "Argon2id 8 MiB x 12 passes, 1 lanes (over the limit: never tried)" in res.out
    res = run_cli("--json", "key", "list", repo=repo_path)
    docs = json.loads(res.out)
    assert sorted(d["kdf_iterations"] for d in docs) == [1, 12]
    assert sorted(d["over_limit"] for d in docs) == [False, True]
    res = run_cli("check", repo=repo_path)
    assert res.code == 0 and "above the limit" in res.err


def test_cli_with_a_planted_costly_key_file_and_no_local_record(repo_path: str) -> None:
    """A command on a new client still opens the repository, without running 4 GiB Argon2."""
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import run_cli

    backend = LocalBackend(repo_path)
    mine = [n for n, _ in backend.list("keys/")][0].rsplit("/", 1)[1]
    _plant(backend, KdfParams(memory_kib=4 << 20, iterations=100, lanes=4), before=mine)
    shutil.rmtree(open_repo(repo_path).state.folder)
    res = run_cli("snapshots", repo=repo_path, timeout=60)
    assert res.code == 0, res.err
    res = run_cli("snapshots", repo=repo_path, env={"CASBACKUP_PASSWORD": "wrong"}, timeout=60)
    assert res.code == 12 and "1 damaged key files skipped" in res.err


def test_key_list_escapes_what_a_key_file_says(repo_path: str) -> None:
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import run_cli

    backend = LocalBackend(repo_path)
    (name,) = [n for n, _ in backend.list("keys/")]
    doc = json.loads(backend.get(name))
    doc.update(user="\x1b]0;owned\x07\x1b[31mroot", host="h" * 500)
    data = json.dumps(doc).encode()
    backend.put(f"keys/{file_id(data)}", data)
    res = run_cli("key", "list", repo=repo_path)
    assert res.code == 0, res.err
    assert "\x1b" not in res.out and "\x07" not in res.out
    assert "\\x1b]0;owned\\x07\\x1b[31mroot@" in res.out and "h" * 500 not in res.out


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"nonce": "AAAA"}, "wrong size"),
        ({"salt": "!!!"}, "not base64"),
        ({"wrapped": "AAAAAAAA"}, "wrong size"),
        ({"salt": None}, "not a string"),
    ],
    ids=["nonce", "salt-b64", "wrapped", "salt-missing"],
)
def test_malformed_key_file_is_named_and_never_derived(
    repo_path: str, derives: list[KdfParams], change: dict[str, object], problem: str
) -> None:
    """A planted key file whose salt, nonce or wrapped key cannot be right: key list and
    check named it as a good key file and opening ran Argon2 for it."""
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import run_cli

    backend = LocalBackend(repo_path)
    (name,) = [n for n, _ in backend.list("keys/")]
    doc = json.loads(backend.get(name))
    doc.update(change)
    data = json.dumps(doc).encode()
    backend.put(f"keys/{file_id(data)}", data)
    derives.clear()
    with pytest.raises(WrongPassword, match="1 damaged key files skipped"):
        open_repo(repo_path, "wrong")
    assert len(derives) == 1  # only the real key file
    res = run_cli("--json", "key", "list", repo=repo_path)
    planted = next(k for k in json.loads(res.out) if k["id"] == file_id(data))
    assert problem in planted["problem"]
    res = run_cli("check", repo=repo_path)
    assert res.code == 29 and f"keys/{file_id(data)} is damaged" in res.err, res.err


def test_key_files_of_a_newer_format_say_upgrade(repo_path: str) -> None:
    # A newer casbackup may write its key files in a format this one does not know; with
    # only such key files the error was "no key file of this repository is readable" (exit
    # 22, as for damage), never the "upgrade casbackup" (exit 21) the config gets.
    from casbackup.errors import UnsupportedFormat
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import run_cli

    backend = LocalBackend(repo_path)
    (name,) = [n for n, _ in backend.list("keys/")]
    doc = json.loads(backend.get(name))
    doc["version"] = 2
    data = json.dumps(doc).encode()
    backend.delete(name)
    backend.put(f"keys/{file_id(data)}", data)
    with pytest.raises(UnsupportedFormat, match="upgrade casbackup"):
        open_repo(repo_path)
    res = run_cli("snapshots", repo=repo_path)
    assert res.code == 21 and res.err.count("\n") == 1, res.err
    assert "key file version 2 is not supported" in res.err and "upgrade casbackup" in res.err


def test_a_client_that_knows_its_key_file_reads_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ordering by cost reads every key file first; the one that opened last must still be
    # tried alone, or a storage full of planted key files costs every open a read of each.
    backend = MemoryBackend()
    make_repo(backend).close()
    mine = _key_id(backend)
    for _ in range(5):
        _plant(backend, WEAK_KDF)
    reads: list[str] = []
    real = MemoryBackend.get

    def counting(self: MemoryBackend, name: str, *args: object) -> bytes:
        if name.startswith("keys/"):
            reads.append(name)
        return real(self, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(MemoryBackend, "get", counting)
    open_repo(backend).close()
    assert reads == [f"keys/{mine}"]


def test_a_wrong_passphrase_stops_within_a_cost_budget(
    derives: list[KdfParams], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty planted key files at the limit (1 GiB x 10 passes, 18 s each) cost a typo six
    minutes of Argon2. The key files tried may cost twice the limit in all (at least one
    is always tried), unless CASBACKUP_KEY_TRIES asks for more; the error names it."""
    monkeypatch.setenv("CASBACKUP_KDF_LIMIT", "16:2:1")  # a limit of 16 MiB x 2 passes
    at_limit = KdfParams(memory_kib=16384, iterations=2, lanes=1)
    backend = MemoryBackend()
    make_repo(backend).close()
    for _ in range(3):
        _plant(backend, at_limit)
    derives.clear()
    with pytest.raises(WrongPassword, match="2 more not tried: set CASBACKUP_KEY_TRIES=4"):
        open_repo(backend, "wrong")
    assert derives == [WEAK_KDF, at_limit]  # 8 + 32 MiB-passes; a third would pass 64
    open_repo(backend).close()  # the right passphrase still opens at once
    derives.clear()
    monkeypatch.setenv("CASBACKUP_KEY_TRIES", "4")
    with pytest.raises(WrongPassword, match="opens with it$"):
        open_repo(backend, "wrong")
    assert derives == [WEAK_KDF, at_limit, at_limit, at_limit]
