"""Fill a repository's index with N synthetic entries, for the scale benchmark only.

    CASBACKUP_PASSWORD=... python -m casbackup.testing.synth_index REPO N

The entries name a pack that does not exist, so `check` on such a repository reports
them: never run this on a repository that holds real backups. It writes index files of
100,000 entries each and then brings the local LMDB cache up to date, so a timed
backup afterwards measures lookups in a large index, not the one-time cache build.
"""

from __future__ import annotations

import os
import sys

from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location, encode_index
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend

PER_FILE = 100_000


def fill(repo: Repository, count: int) -> None:
    fake_pack = FileId("f" * 64)
    done = 0
    while done < count:
        n = min(PER_FILE, count - done)
        entries = [
            (BlobId(os.urandom(32)), Location(fake_pack, i * 100, 100, 100, Kind.DATA))
            for i in range(n)
        ]
        repo.save_file_object("index", Kind.INDEX, encode_index({fake_pack: entries}))
        done += n
    repo.sync_index()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m casbackup.testing.synth_index REPO N")
    repo = Repository.open(LocalBackend(sys.argv[1]), os.environ["CASBACKUP_PASSWORD"].encode())
    try:
        fill(repo, int(sys.argv[2]))
        print(f"index now holds {repo.cache.count()} entries")
    finally:
        repo.close()


if __name__ == "__main__":
    main()
