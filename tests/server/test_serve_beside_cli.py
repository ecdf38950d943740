"""`casbackup serve` and a CLI client on one repository: the service browses a snapshot,
the CLI runs forget --prune, which repacks what the snapshot keeps. Before, the service's
index still named the deleted packs and every folder it had not cached answered HTTP 500
'data/.. is missing from the repository' (reported as damage) until the next backup or a
restart; now it follows the blobs to their new packs."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from casbackup.testing.fixtures import run_cli
from tests.server.test_e2e import site, start  # noqa: F401  (site: a fixture)


def _backup(site: dict[str, Any], *extra: str) -> str:  # noqa: F811
    res = run_cli("--config", site["config"], "--json", "backup", "--app", "notes", *extra)
    assert res.code == 0, res.err
    return str(json.loads(res.out.splitlines()[-1])["snapshot_id"])


@pytest.mark.slow
def test_the_service_browses_on_after_a_cli_prune_repacked(site: dict[str, Any]) -> None:  # noqa: F811
    app = site["app"]
    (app / "kept.bin").write_bytes(os.urandom(200_000))
    (app / "dropped.bin").write_bytes(os.urandom(200_000))
    first = _backup(site)
    (app / "dropped.bin").unlink()
    second = _backup(site, "--type", "full")[:8]
    server = start(site)
    try:
        listing = server.get(f"/api/snapshots/{second}/tree", params={"path": str(app)})
        assert listing.status_code == 200, listing.text
        # The CLI as another user (or with another cache folder) than the service.
        other = {"CASBACKUP_CACHE_DIR": str(site["tmp"] / "cli-cache")}
        res = run_cli("--config", site["config"], "forget", first, "--prune",
                      "--max-unused", "0", env=other)  # fmt: skip
        assert res.code == 0 and "repack" in res.out, res.err
        for path in (app / "data", app / "big"):  # trees the service never read
            listing = server.get(f"/api/snapshots/{second}/tree", params={"path": str(path)})
            assert listing.status_code == 200, listing.text
        got = server.get(f"/api/snapshots/{second}/download", params={"path": f"{app}/kept.bin"})
        assert got.status_code == 200 and got.content == (app / "kept.bin").read_bytes()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
