"""The service's parts, wired together once per app instance (``app.state.service``).

Routes reach everything through this object; nothing is a module-level global, so several app
instances (tests) never share state, metrics registries included.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from casbackup.server.accounts import Accounts, make_hasher
from casbackup.server.auth import is_in
from casbackup.server.events import EventBus
from casbackup.server.login_limit import LoginLimiter
from casbackup.server.repos import Registry
from casbackup.server.settings import Settings
from casbackup.server.statedb import InstanceLock, StateDB


class Service:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = clock()
        self._started_mono = time.monotonic()
        self.db = StateDB(settings.state_dir)
        self.accounts = Accounts(self.db, make_hasher(cheap=settings.cheap_password_hashing))
        self.registry = Registry(settings)
        self.events = EventBus()
        self.limiter = LoginLimiter(settings.login_max_failures, settings.login_window_s)
        self._proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = (
            settings.proxy_networks()
        )
        self.jobs: Any = None  # JobManager, set by start()
        self.scheduler: Any = None
        self.metrics: Any = None
        self._starts = 0  # lifespans nest when an app is mounted or wrapped (test clients do)
        self._instance_lock: InstanceLock | None = None

    def uptime(self) -> float:
        """Seconds since this service was made, by the monotonic clock: NTP stepping the
        wall clock back an hour made the uptime negative (a restart, to a monitor)."""
        return time.monotonic() - self._started_mono

    def zone_name(self) -> str | None:
        """The zone the user gave schedules and retention: ``--timezone``, else the config's
        ``timezone``; None: the machine's (casbackup/timezones.py)."""
        return self.settings.timezone or self.registry.config.timezone

    def zone(self) -> dt.tzinfo:
        """The zone of the schedules and of the forget jobs' calendar (``zone_name``)."""
        from casbackup.timezones import zone

        return zone(self.zone_name())

    def is_trusted_proxy(self, address: str) -> bool:
        return bool(self._proxies) and is_in(address, self._proxies)

    def claim_state_dir(self) -> None:
        """Become the one service of this state folder, until ``stop``; raises LockError if
        another process already is. Two services on one folder would each take the other's
        running jobs for interrupted at start-up, both run its queued jobs and both fire its
        schedules. Idempotent; ``start`` claims too, ``casbackup serve`` earlier (one line,
        before it listens)."""
        if self._instance_lock is None:
            self._instance_lock = InstanceLock.acquire(self.settings.state_dir)

    def start(self) -> None:
        """Start background parts (jobs, scheduler). Called from the app's lifespan."""
        self._starts += 1
        if self._starts > 1:
            return
        try:
            self.claim_state_dir()
        except BaseException:
            self._starts -= 1
            raise
        from casbackup.server.jobs import JobManager
        from casbackup.server.metrics import Metrics

        self.metrics = Metrics(self)
        self.jobs = JobManager(self)
        self.jobs.recover_interrupted()
        if self.settings.run_scheduler:
            from casbackup.server.scheduler import Scheduler

            self.scheduler = Scheduler(self)
            self.scheduler.start()

    def stop(self) -> None:
        """Graceful stop: cancel running jobs (their state recorded), end event streams."""
        self._starts -= 1
        if self._starts > 0:
            return
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.jobs is not None:
            self.jobs.shutdown()
        self.events.close()
        self.registry.close()
        self.db.close()
        if self._instance_lock is not None:
            self._instance_lock.release()
            self._instance_lock = None
