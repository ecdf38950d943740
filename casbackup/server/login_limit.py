"""Failed logins: keep password guessing slow without letting a stranger lock anyone out.

Three counts of failures in one sliding window (``window_s`` seconds, ``max_failures`` each):

- per client and user name: that client may not try that name again until the oldest of
  its failures leaves the window, whether or not the password would be right;
- per client, whatever the names: a spray of names from one place stops the same way;
- per user name, from every client: once a name has ``max_failures`` failures from anywhere
  it is under attack, and each client gets one guess a window at it: a client that has
  failed for it is refused, one that has not (its owner at their own desk) still logs in.

A lock per name alone (the old rule) let anyone lock any account out, the admin's included,
with five wrong passwords from anywhere; now only clients that guessed wrong are refused, and
a guesser with many addresses gets one guess per address per window. A client is an IPv4
address or an IPv6 /64 (one host is given a whole /64: counting its addresses one by one
would give it 2^64 tries). Kept in memory, bounded: a restart forgets it, which costs an
attacker a restart they cannot cause.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable

Key = tuple[str, ...]


def client_of(address: str) -> str:
    """The unit that failures are counted by: an IPv4 address (an IPv4-mapped IPv6 one
    included), an IPv6 /64, or the text itself when it is not an address (test clients)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """The three failure counts above; thread-safe. ``clock`` is monotonic seconds."""

    def __init__(
        self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max = max_failures
        self.window = window_s
        self.clock = clock
        self._failures: dict[Key, deque[float]] = {}
        self._lock = threading.Lock()
        self.max_keys = 100_000

    def _recent(self, key: Key, now: float) -> deque[float]:
        """The failures of ``key`` still in the window (an empty deque, not stored, if none)."""
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    @staticmethod
    def _keys(address: str, user: str) -> tuple[Key, Key, Key]:
        client = client_of(address)
        return ("pair", client, user), ("client", client), ("user", user)

    def retry_after(self, address: str, user: str) -> float:
        """Seconds until this client may try this user name again (0: now)."""
        now = self.clock()
        pair_key, client_key, user_key = self._keys(address, user)
        with self._lock:
            pair = self._recent(pair_key, now)
            client = self._recent(client_key, now)
            named = self._recent(user_key, now)
            waits = [q[0] + self.window - now for q in (pair, client) if len(q) >= self.max]
            if pair and len(named) >= self.max:
                # under attack: until this client's failures for the name leave the window,
                # or the name's failures drop below the threshold, whichever comes first
                calm = named[len(named) - self.max] + self.window - now
                waits.append(min(pair[-1] + self.window - now, calm))
        return max(waits, default=0.0)

    def failed(self, address: str, user: str) -> None:
        """Count a wrong name or password from ``address``."""
        now = self.clock()
        with self._lock:
            for key in self._keys(address, user):
                q = self._failures.get(key)
                if q is None:
                    q = self._failures[key] = deque()
                q.append(now)
            if len(self._failures) > self.max_keys:  # bounded memory under a spray of names
                self._evict(now)

    def _evict(self, now: float) -> None:
        for k in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window]:
            del self._failures[k]
        # Still too many live keys: forget per-name counts (oldest first) before any client's:
        # the per-client limit still holds for whoever sprays names.
        excess = len(self._failures) - self.max_keys // 2
        order = sorted(self._failures, key=lambda k: k[0] == "client")
        for k in order[: max(0, excess)]:
            del self._failures[k]

    def succeeded(self, address: str, user: str) -> None:
        """A right password: forget this client's failures for this name (not the name's
        count from elsewhere: its owner logging in must not reset an attacker's budget)."""
        with self._lock:
            self._failures.pop(self._keys(address, user)[0], None)
