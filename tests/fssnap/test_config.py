"""The config's file-system snapshot settings, the plan they make, the snapshot record's field,
and the small pure parts (names, mountinfo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casbackup.archiver.application import fs_plan
from casbackup.config import load_config
from casbackup.config.model import AppConfig, SnapshotsConfig
from casbackup.errors import ConfigError
from casbackup.fssnap.base import parse_name, snapshot_name
from casbackup.fssnap.mounts import mount_of
from casbackup.repo.snapshot import FsSnapshotRecord, Snapshot

APP = '[[applications]]\nname = "web"\nsources = ["/srv/web"]\n'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "casbackup.toml"
    path.write_text(text)
    return load_config(path)


def test_toml_snapshot_settings(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        '[snapshots]\nenabled = true\nprovider = "auto"\nmax_snapshots = 2\n'
        'lvm_snapshot_size = "20%ORIGIN"\nauto_cleanup = false\n' + APP + 'snapshot = "btrfs"\n',
    )
    snaps = cfg.snapshots  # type: ignore[attr-defined]
    assert (snaps.enabled, snaps.provider, snaps.max_snapshots) == (True, "auto", 2)
    assert snaps.lvm_snapshot_size == "20%ORIGIN" and snaps.auto_cleanup is False
    assert cfg.applications[0].snapshot == "btrfs"  # type: ignore[attr-defined]


def test_toml_takes_the_seeds_type_for_provider(tmp_path: Path) -> None:
    """The seed's section says `type`: copied into a TOML config it failed with "snapshots
    are enabled but no 'provider' is given"."""
    cfg = _load(tmp_path, '[snapshots]\nenabled = true\ntype = "btrfs"\n' + APP)
    assert cfg.snapshots.provider == "btrfs"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="given twice"):
        _load(tmp_path, '[snapshots]\ntype = "btrfs"\nprovider = "zfs"\n' + APP)
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, '[snapshots]\ntype = "vss"\n' + APP)
    assert exc.value.key == "snapshots.type"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (APP + 'snapshot = "ext4"\n', "applications[0].snapshot", "unknown snapshot 'ext4'"),
        ('[snapshots]\nlvm_snapshot_size = "lots"\n', "snapshots.lvm_snapshot_size",
         "'lots' is not an LVM size"),
        ('[snapshots]\nprovider = "vss"\n', "snapshots.provider", "unknown provider 'vss'"),
    ],
)  # fmt: skip
def test_bad_snapshot_settings(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert exc.value.key == key and fragment in str(exc.value)


def test_legacy_json_snapshot_section_and_app_setting(tmp_path: Path) -> None:
    path = tmp_path / "config_phase3.json"
    path.write_text(json.dumps({
        "applications": [{"name": "Demo", "source": "./demo", "snapshot": "zfs"}],
        "snapshots": {"enabled": True, "type": "btrfs", "auto_cleanup": True, "max_snapshots": 4},
    }))  # fmt: skip
    cfg = load_config(path)
    assert cfg.snapshots.provider == "btrfs" and cfg.snapshots.max_snapshots == 4
    assert cfg.applications[0].snapshot == "zfs"
    assert cfg.warnings == ()


def test_plan_app_setting_wins_then_section() -> None:
    app = AppConfig(name="a", sources=("/x",))
    assert fs_plan(app, SnapshotsConfig()) is None
    assert fs_plan(app, SnapshotsConfig(enabled=False, provider="lvm")) is None
    plan = fs_plan(app, SnapshotsConfig(enabled=True, provider="lvm", max_snapshots=2,
                                        lvm_snapshot_size="5G"))  # fmt: skip
    assert plan is not None and (plan.provider, plan.max_snapshots) == ("lvm", 2)
    assert plan.settings.lvm_snapshot_size == "5G"
    own = AppConfig(name="a", sources=("/x",), snapshot="zfs")
    assert fs_plan(own, SnapshotsConfig(enabled=True, provider="lvm")).provider == "zfs"  # type: ignore[union-attr]
    off = AppConfig(name="a", sources=("/x",), snapshot="none")
    assert fs_plan(off, SnapshotsConfig(enabled=True, provider="lvm")) is None


def _snap(**kw: object) -> Snapshot:
    return Snapshot(time="2026-01-01T00:00:00+00:00", start_ns=1, host="h", user="u",
                    paths=("/srv",), tree="00" * 32, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_record_round_trip_and_older_records_unchanged() -> None:
    plain = _snap()
    assert b"fs_snapshots" not in plain.encode()  # records without it stay as they were
    assert Snapshot.decode(plain.encode()).fs_snapshots == ()
    rec = FsSnapshotRecord("/srv", "btrfs", "/srv", "2026-01-01T00:00:00+00:00")
    with_fs = _snap(fs_snapshots=(rec,))
    assert Snapshot.decode(with_fs.encode()).fs_snapshots == (rec,)


def test_names_are_recognised_only_when_ours() -> None:
    name = snapshot_name("my app/../x", now=0, pid=4242)
    assert name == "casbackup-my_app_.._x-19700101T000000Z-4242"
    assert parse_name(name) == 4242
    for other in ("casbackup", "nightly", "casbackup-web-20260101T000000Z", "casbackup-x-1-2"):
        assert parse_name(other) is None


def test_mount_of_picks_the_longest_prefix_and_unescapes() -> None:
    info = (
        "22 1 0:21 / / rw - overlay overlay rw\n"
        "40 22 0:40 / /srv rw - ext4 /dev/sda1 rw\n"
        "41 40 0:41 /@data /srv/my\\040data rw - btrfs /dev/loop0 rw\n"
        "42 22 0:42 / /srvx rw - zfs tank rw\n"
    )
    m = mount_of("/srv/my data/file", info)
    assert m is not None and (m.mount_point, m.fstype, m.root) == (
        "/srv/my data",
        "btrfs",
        "/@data",
    )
    assert mount_of("/srvx/a", info).fstype == "zfs"  # type: ignore[union-attr]
    assert mount_of("/srv/other", info).source == "/dev/sda1"  # type: ignore[union-attr]
    assert mount_of("/etc", info).fstype == "overlay"  # type: ignore[union-attr]


def test_sequence_numbers_keep_names_ours() -> None:
    first, second = snapshot_name("a", now=0, pid=7), snapshot_name("a", now=0, pid=7, seq=1)
    assert first != second and second == "casbackup-a-19700101T000000Z.1-7"
    assert parse_name(second) == 7
