"""Warming the sources' folder listings and metadata ahead of a backup's walk.

An unchanged re-backup reads no file: on a cold cache its time is the folder listings and
inodes that the walk and the readers' comparisons (archiver/compare.py) wait for, one disk
read at a time in each process. The threads here list the sources and stat every entry in
the walk's order (sorted, depth first), so that those reads are in flight several at a
time, starting while the passphrase's key is derived and the repository is opened. Nothing
here decides anything: the walk itself is unchanged and finds the kernel's caches filled.

When the first entries come back at memory speed the caches are warm already, and the
warmer stops (it then cost a few milliseconds); it also stops after MAX_ENTRIES. It never
reports errors (the walk does), and it follows the walk's rules for what is left out:
excludes and --one-file-system.

``warmer_for`` derives a warmer from a backup's ``BackupOptions`` (the one description of
what a backup reads, for PATHS and for an application alike), and ``WarmAhead`` warms
backups run one after another (``backup --all``): each next one's sources while the one
before it is backed up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from casbackup.archiver.backup_options import BackupOptions, database_paths
from casbackup.archiver.excludes import Excluder
from casbackup.threadsig import quiet_thread

# Threads, so reads in flight. The bench corpus (6,849 folders, 66,848 entries) listed cold
# by this warmer alone: 1.0-1.3 s with 4 threads, 1.0 s with 8, for about the same CPU
# (0.8-1.1 s: mostly the kernel building its inodes, which the walk then need not); a
# single-threaded stat walk took 2.3 s (shared 2-core VM, load average about 9).
log = logging.getLogger("casbackup.archiver.warm")

THREADS = 4
PROBE_ENTRIES = 2000  # entries one thread visits before deciding whether warming pays
# At most this much time per entry over the probe and the caches count as warm. Measured
# over the bench corpus's first 2,000 entries: 21-34 us an entry cold (a disk read for a
# folder's block or an inode, shared by the neighbours it brings in), 4-10 us warm.
WARM_S_PER_ENTRY = 12e-6
# Entries visited at most. The warmer does not know how far behind the walk is: on a tree
# whose metadata outgrows the kernel's caches, what it read first would be evicted again
# before the walk got there, and warming would only double the reads.
MAX_ENTRIES = 500_000


class SourceWarmer:
    """Threads that list and stat the trees under ``paths`` once (see the module docstring).

    ``excluder``: the paths the backup leaves out are not visited. ``one_file_system``:
    folders on another device than their source's are not entered. ``max_entries``: stop
    after listing about this many entries (None: MAX_ENTRIES). ``start`` returns at once;
    ``stop`` asks the threads to end and waits for them briefly (a thread waiting on a slow
    file system ends when its call returns).
    """

    def __init__(
        self,
        paths: Iterable[str | bytes],
        *,
        excluder: Excluder | None = None,
        one_file_system: bool = False,
        threads: int = THREADS,
        max_entries: int | None = None,
    ) -> None:
        self._excluder = excluder if excluder else None
        self._one_file_system = one_file_system
        self._want_threads = max(1, threads)
        self._max_entries = max_entries
        self._cond = threading.Condition()
        self._todo: list[tuple[bytes, int]] = []  # (folder, its source's device): a stack
        self._busy = 0
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self.entries = 0  # entries listed so far
        self.warm = False  # the probe found the caches warm and stopped
        roots = sorted({os.fsencode(os.path.abspath(p)) for p in paths}, reverse=True)
        self._roots = roots

    def start(self) -> None:
        """Start the first thread: it probes, then starts the others if warming pays."""
        self._start_thread(probe=True)

    def stop(self, wait_s: float = 0.5) -> None:
        """Ask every thread to stop; wait up to ``wait_s`` seconds in all for them."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + wait_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _start_thread(self, *, probe: bool) -> None:
        thread = quiet_thread(self._run, (probe,), name="source-warmer")
        with self._cond:
            if self._stopped:
                return
            # Started under the lock: ``stop`` (another thread, at any time since a first
            # backup stops its warmer before its walk) joins every listed thread, and
            # joining one not started yet raises RuntimeError. start() returns once the
            # thread runs, before it asks for this lock, so holding it here cannot deadlock.
            self._threads.append(thread)
            thread.start()

    def _run(self, probe: bool) -> None:
        try:
            self._warm(probe)
        except Exception:  # never the backup's business: it reads and reports for itself
            log.debug("the source warmer stopped early", exc_info=True)
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    def _warm(self, probe: bool) -> None:
        limit = MAX_ENTRIES if self._max_entries is None else self._max_entries
        if probe:
            self._push_roots()
            started = time.monotonic()
        while True:
            with self._cond:
                while not self._todo and self._busy and not self._stopped:
                    self._cond.wait()
                if self._stopped or not self._todo:
                    self._stopped = True  # all visited: wake the others to end too
                    self._cond.notify_all()
                    return
                folder, device = self._todo.pop()
                self._busy += 1
            below, listed = self._visit(folder, device)
            with self._cond:
                self.entries += listed
                self._busy -= 1
                if self.entries >= limit:
                    self._stopped = True
                # Reversed: the stack then gives the first name first, as the walk goes.
                self._todo.extend((path, device) for path in reversed(below))
                self._cond.notify_all()
            if probe and self.entries >= PROBE_ENTRIES:
                probe = False
                if time.monotonic() - started <= self.entries * WARM_S_PER_ENTRY:
                    self.warm = True
                    with self._cond:
                        self._stopped = True
                    return
                for _ in range(self._want_threads - 1):
                    self._start_thread(probe=False)

    def _push_roots(self) -> None:
        for root in self._roots:
            try:
                st = os.lstat(root)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                with self._cond:
                    self._todo.append((root, st.st_dev))

    def _visit(self, folder: bytes, device: int) -> tuple[list[bytes], int]:
        """Stat every entry of ``folder``: (its subfolders to visit, sorted; entries listed)."""
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return [], 0
        below = []
        excluder = self._excluder
        for entry in entries:
            if self._stopped:
                break
            if excluder is not None and excluder.excluded(os.fsdecode(entry.path)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and not (self._one_file_system and st.st_dev != device):
                below.append(entry.path)
        return below, len(entries)


@contextlib.contextmanager
def warming(
    paths: Iterable[str | bytes],
    *,
    excluder: Excluder | None = None,
    one_file_system: bool = False,
) -> Iterator[SourceWarmer]:
    """A ``SourceWarmer`` running for the duration of the block."""
    warmer = SourceWarmer(paths, excluder=excluder, one_file_system=one_file_system)
    warmer.start()
    try:
        yield warmer
    finally:
        warmer.stop()


def warmer_for(options: BackupOptions, *, max_entries: int | None = None) -> SourceWarmer | None:
    """A warmer, not started, for what the backup that ``options`` describe walks: its
    paths, leaving out what its walk leaves out (its excludes, and the database files it
    dumps through their engine) and keeping to its ``one_file_system`` rule, as
    archiver/backup.py's ``Backup`` does. None for a backup read from file-system snapshots
    (``fs_plan`` or ``read_from`` set): the live folders are not what it reads."""
    if options.fs_plan is not None or options.read_from or not options.paths:
        return None
    excluder = Excluder(list(options.excludes), exact=database_paths(options))
    return SourceWarmer(
        options.paths,
        excluder=excluder,
        one_file_system=options.one_file_system,
        max_entries=max_entries,
    )


class WarmAhead:
    """Warming for backups run one after another, each described by its ``BackupOptions``
    (None: not warmed): ``start`` warms the first one's sources (while the repository is
    opened), and ``begin(k)``, called as backup k starts, warms backup k + 1's while k is
    backed up. Only one backup ahead, and the warmers running at a time list at most
    MAX_ENTRIES entries together: what a later backup's warming reads must not push out of
    the kernel's caches what the running backup is about to read.

    Never raises: warming only saves time, so a warmer that cannot be set up or started
    is skipped.
    """

    def __init__(self, backups: Sequence[BackupOptions | None]) -> None:
        self._backups = list(backups)
        self._warmers: dict[int, SourceWarmer] = {}  # by backup index: started, not stopped
        self.started: list[int] = []  # indexes of the backups warmed, in order (for tests)

    def start(self) -> None:
        """Warm the first backup's sources."""
        self._warm(0)

    def begin(self, index: int) -> None:
        """Backup ``index`` starts now: stop the warmers of the backups before it, keep its
        own (or start it, if it had none yet) and start the next backup's."""
        for k in [k for k in self._warmers if k < index]:
            self._warmers.pop(k).stop(wait_s=0.0)  # their backups are done
        self._warm(index)
        self._warm(index + 1)

    def parent_chosen(self, index: int) -> Callable[[bool], None]:
        """For backup ``index``'s ``BackupOptions.on_parent_chosen``: when it reads every
        file (no parent snapshot to reuse files from), its own warmer stops; the next
        backup's goes on. Such a walk stats every entry itself just ahead of the readers,
        so a second listing only costs CPU that a first backup is bound by (bench/RESULTS.md
        "Issue 17: first backup wall time"); what was warmed before is kept."""

        def chosen(reuses_parent: bool) -> None:
            warmer = None if reuses_parent else self._warmers.pop(index, None)
            try:
                if warmer is not None:
                    warmer.stop(wait_s=0.0)
            except Exception:  # called inside the backup: warming never fails one
                log.debug("the warmer of backup %d did not stop cleanly", index, exc_info=True)

        return chosen

    def stop(self, wait_s: float = 0.5) -> None:
        """Stop every warmer; wait up to ``wait_s`` seconds in all for their threads."""
        warmers = list(self._warmers.values())
        self._warmers.clear()
        for warmer in warmers:  # all asked first, then waited for within one deadline
            warmer.stop(wait_s=0.0)
        deadline = time.monotonic() + wait_s
        for warmer in warmers:
            warmer.stop(wait_s=max(0.0, deadline - time.monotonic()))

    def _warm(self, index: int) -> None:
        if index in self._warmers or index in self.started or index >= len(self._backups):
            return
        options = self._backups[index]
        if options is None:
            return
        # Entries listed by the warmers still running count against this one's MAX_ENTRIES.
        budget = MAX_ENTRIES - sum(w.entries for w in self._warmers.values())
        if budget <= 0:
            return
        try:
            warmer = warmer_for(options, max_entries=budget)
            if warmer is None:
                return
            warmer.start()
        except Exception:  # e.g. an exclude pattern that does not compile: the backup says so
            log.debug("sources of backup %d not warmed", index, exc_info=True)
            return
        self._warmers[index] = warmer
        self.started.append(index)


@contextlib.contextmanager
def warming_ahead(backups: Sequence[BackupOptions | None]) -> Iterator[WarmAhead]:
    """A ``WarmAhead`` over ``backups``, started (the first backup's sources are being
    warmed) and stopped when the block ends."""
    ahead = WarmAhead(backups)
    ahead.start()
    try:
        yield ahead
    finally:
        ahead.stop()
