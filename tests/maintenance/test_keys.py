"""key list/add/remove/passwd: never lose the last way in."""

from __future__ import annotations

import json

import pytest

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.errors import NotFound, UsageError, WrongPassword
from casbackup.maintenance.keys import add_key, change_password, list_keys, remove_key
from casbackup.testing.fixtures import PASSWORD, open_repo, run_cli


def test_add_remove_and_guards(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    (only,) = list_keys(repo)
    assert only.current and only.info is not None
    with pytest.raises(UsageError, match="last key"):
        remove_key(repo, only.id, force=True)
    second = add_key(repo, b"other pass", WEAK_KDF)
    assert open_repo(repo_path, "other pass").key_name == f"keys/{second}"
    with pytest.raises(UsageError, match="--force"):
        remove_key(repo, only.id[:6])
    with pytest.raises(NotFound):
        remove_key(repo, "zz")
    assert remove_key(repo, second[:10]) == second
    with pytest.raises(WrongPassword):
        open_repo(repo_path, "other pass")
    with pytest.raises(UsageError):
        add_key(repo, b"", WEAK_KDF)


def test_passwd_replaces_the_current_key(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    new, old = change_password(repo, b"new pass", WEAK_KDF)
    assert [k.id for k in list_keys(repo)] == [new]
    assert list_keys(repo)[0].current
    with pytest.raises(WrongPassword):
        open_repo(repo_path)
    assert open_repo(repo_path, "new pass").key_name == f"keys/{new}"
    assert old != new
    assert repo.state.doc.last_key == new  # tried first from now on


def test_a_damaged_key_does_not_count_as_a_way_in(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    repo.backend.put("keys/" + "ab" * 32, b"not json")
    listed = list_keys(repo)
    assert len(listed) == 2 and any(k.info is None and k.problem for k in listed)
    with pytest.raises(UsageError, match="last key"):
        remove_key(repo, repo.key_name.rsplit("/", 1)[1], force=True)


def test_cli_keys(repo_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli(
        "key",
        "add",
        "--insecure-test-kdf",
        repo=repo_path,
        env={"CASBACKUP_NEW_PASSWORD": "second"},
    )
    assert res.code == 0 and res.out.startswith("added key "), res.err
    res = run_cli("--json", "key", "list", repo=repo_path)
    keys = json.loads(res.out)
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    current = next(k["id"] for k in keys if k["current"])
    res = run_cli("key", "remove", current[:8], repo=repo_path)
    assert res.code == 2 and "--force" in res.err and res.err.count("\n") == 1
    res = run_cli("key", "remove", "ffff", repo=repo_path)
    assert res.code == 23
    pw = tmp_path / "pw"
    pw.write_text("third\n")
    res = run_cli(
        "key", "passwd", "--insecure-test-kdf", "--new-password-file", str(pw), repo=repo_path
    )
    assert res.code == 0 and "passphrase changed" in res.out, res.err
    assert run_cli("snapshots", repo=repo_path).code == 12  # the old passphrase no longer opens it
    res = run_cli("key", "list", repo=repo_path, env={"CASBACKUP_PASSWORD": "third"})
    assert res.code == 0 and res.out.count("\n") == 2 and res.out.count("*") == 1
    res = run_cli("key", "add", repo=repo_path, env={"CASBACKUP_PASSWORD": "third"})
    assert res.code == 2 and "no new passphrase" in res.err
    assert PASSWORD


def test_passwd_after_another_passwd_removed_the_key_adds_nothing(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    # Two `key passwd` at once: each opens the repository, then waits its turn for the
    # exclusive lock. The second finds the key it opened with gone; it used to add its new
    # key anyway and then fail on the delete (exit 23), leaving a passphrase the user was
    # told had not been set.
    other = open_repo(repo_path)
    first, _old = change_password(other, b"first pass", WEAK_KDF)
    with pytest.raises(WrongPassword, match="removed"):
        change_password(repo, b"second pass", WEAK_KDF)
    assert [k.id for k in list_keys(other)] == [first]
    with pytest.raises(WrongPassword):
        open_repo(repo_path, "second pass")


def test_a_key_over_the_cost_limit_does_not_count_as_a_way_in(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    # Opening never tries a key file over the limit, so it is no way in: removing the key in
    # use beside one (say, planted by whoever can write the storage) left none that opens.
    from casbackup.crypto.keyfile import KdfParams

    repo.add_key(b"costly", KdfParams(memory_kib=8192, iterations=50, lanes=1))
    assert any(k.over_limit for k in list_keys(repo))
    with pytest.raises(UsageError, match="last key"):
        remove_key(repo, repo.key_name.rsplit("/", 1)[1], force=True)
    assert open_repo(repo_path).key_name == repo.key_name


def test_passwd_says_where_the_old_passphrase_still_lives(repo_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A newcomer keeps the passphrase in a file the config (and `casbackup serve`) reads.
    # `key passwd` used to end with "passphrase changed" alone: the next command, and every
    # scheduled backup, then failed with "wrong passphrase" and nothing had said why.
    old = tmp_path / "repo.pass"
    old.write_text(PASSWORD + "\n")
    new = tmp_path / "new.pass"
    new.write_text("rotated\n")
    env = {"CASBACKUP_PASSWORD": "", "CASBACKUP_PASSWORD_FILE": str(old)}
    res = run_cli(
        "key", "passwd", "--insecure-test-kdf", "--new-password-file", str(new),
        repo=repo_path, env=env,
    )  # fmt: skip
    assert res.code == 0 and "passphrase changed" in res.out, res.err
    (line,) = res.err.splitlines()
    assert line.startswith(f"warning: the old passphrase came from password file {old}")
    assert "put the new one there" in line
    # Told so, the user does it, and the next command opens the repository again.
    old.write_text("rotated\n")
    assert run_cli("snapshots", repo=repo_path, env=env).code == 0
    # The new passphrase read from that very file: nothing to tell.
    res = run_cli(
        "key", "passwd", "--insecure-test-kdf", "--new-password-file", str(old),
        repo=repo_path, env=env,
    )  # fmt: skip
    assert res.code == 0 and res.err == "", res.err
    res = run_cli(
        "--json", "key", "passwd", "--insecure-test-kdf", repo=repo_path,
        env={"CASBACKUP_PASSWORD": "rotated", "CASBACKUP_NEW_PASSWORD": "again"},
    )  # fmt: skip
    warning = json.loads(res.err.splitlines()[-1])
    assert warning["message_type"] == "warning"
    assert "the variable CASBACKUP_PASSWORD" in warning["message"]
