"""Users, roles, API tokens and browser sessions, kept in the state database.

No FastAPI here: the CLI (`casbackup user ...`, `casbackup token ...`) uses this module too.

- Passwords: Argon2id through pwdlib (argon2-cffi underneath). A hash records its own
  parameters, so hashes made with the cheap test parameters still verify, and stronger
  defaults later only affect new hashes. Hashing costs ~100 ms: the service calls these
  functions from a thread pool, never on the event loop.
- API tokens: ``cbt_<id>_<secret>``. The id (12 hex digits) finds the row; only SHA-256 of the
  secret (32 random bytes, so no slow hash is needed) is stored and compared with
  ``hmac.compare_digest`` (constant time). The secret is shown once, at creation.
- Sessions: a random cookie value; the database holds its SHA-256 (a stolen database does not
  yield live sessions), the user, a per-session CSRF token and an expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from casbackup.errors import NotFound, StorageError, UsageError
from casbackup.server.statedb import StateDB

log = logging.getLogger("casbackup.server")

ROLES = ("viewer", "operator", "admin")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# A token's label: shown in lists and pages; text (no lone surrogate), no controls.
TOKEN_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f\ud800-\udfff]{1,100}$")
MAX_TOKEN_LIFETIME_S = 100 * 365 * 86400
TOKEN_RE = re.compile(r"^cbt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MIN_PASSWORD = 8


def make_hasher(cheap: bool = False) -> Any:
    """A pwdlib PasswordHash using Argon2id; ``cheap`` is for tests only (fast, weak)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    if cheap:
        return PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    return PasswordHash((Argon2Hasher(),))


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    apps: tuple[str, ...] | None  # None: every application
    created_at: float


@dataclass(frozen=True)
class Token:
    id: str
    user: User
    name: str
    apps: tuple[str, ...] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


EMPTY_APPS = (
    "an empty list of applications would mean every application: name at least one, or give "
    "none (null) for every application"
)


def _apps_json(apps: tuple[str, ...] | list[str] | None) -> str | None:
    """The stored form of an account's or token's applications (None, stored NULL: every
    application); raises UsageError for a name the config would refuse (a newline, a '/',
    text that is not UTF-8: it was stored as is and shown in lists, and could never match an
    application) and for an empty list: it meant every application, a trap for whoever sent
    it to mean none."""
    if apps is None:
        return None
    if not apps:
        raise UsageError(EMPTY_APPS)
    from casbackup.config.load import APP_NAME_RE

    for app in apps:
        if not isinstance(app, str) or not APP_NAME_RE.match(app) or app != app.strip():
            raise UsageError(f"application name {app!r} is not valid")
    return json.dumps(sorted(set(apps)))


def _apps(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))


def _user(row: Any) -> User:
    return User(row["id"], row["name"], row["role"], _apps(row["apps"]), row["created_at"])


def check_name(name: str, what: str = "user name") -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"{what} {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    return name


class Accounts:
    """Everything about who may do what, on top of a StateDB."""

    def __init__(self, db: StateDB, hasher: Any | None = None) -> None:
        self.db = db
        self.hasher = hasher if hasher is not None else make_hasher()

    # ----------------------------------------------------------------- users
    def add_user(self, name: str, password: str, role: str, apps: list[str] | None = None) -> User:
        check_name(name)
        if role not in ROLES:
            raise UsageError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        _check_password(password)
        if self.db.one("SELECT 1 FROM users WHERE name = ?", (name,)):
            raise UsageError(f"user {name!r} already exists")
        pw_hash = self.hasher.hash(password)
        cur = self.db.execute(
            "INSERT INTO users (name, role, apps, password_hash, created_at) VALUES (?,?,?,?,?)",
            (name, role, _apps_json(apps), pw_hash, time.time()),
        )
        user = self.user_by_id(int(cur.lastrowid or 0))
        assert user is not None
        return user

    def users(self) -> list[User]:
        return [_user(r) for r in self.db.query("SELECT * FROM users ORDER BY name")]

    def count_users(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM users")
        return int(row[0]) if row else 0

    def user(self, name: str) -> User:
        row = self.db.one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user {name!r}")
        return _user(row)

    def user_by_id(self, user_id: int) -> User | None:
        row = self.db.one("SELECT * FROM users WHERE id = ?", (user_id,))
        return None if row is None else _user(row)

    def set_password(self, name: str, password: str) -> None:
        _check_password(password)
        user = self.user(name)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                (self.hasher.hash(password), user.id),
            )
            # A new password ends every browser session of the old one.
            conn.execute("DELETE FROM sessions WHERE user_id = ?", (user.id,))

    def update_user(
        self, name: str, *, role: str | None = None, apps: list[str] | None | bool = False
    ) -> User:
        """Change role and/or apps (``apps=False``: unchanged; ``None``: all; [] raises
        UsageError, as every other account change with an empty list)."""
        user = self.user(name)
        if role is not None:
            if role not in ROLES:
                raise UsageError(f"role {role!r}: choose one of {', '.join(ROLES)}")
            if role != "admin":
                self._keep_an_admin(user, "demote")
            self.db.execute("UPDATE users SET role = ? WHERE id = ?", (role, user.id))
        if apps is not False:
            value = _apps_json(apps)  # type: ignore[arg-type]
            self.db.execute("UPDATE users SET apps = ? WHERE id = ?", (value, user.id))
        return self.user(name)

    def remove_user(self, name: str) -> None:
        user = self.user(name)
        self._keep_an_admin(user, "remove")
        self.db.execute("DELETE FROM users WHERE id = ?", (user.id,))

    def _keep_an_admin(self, user: User, verb: str) -> None:
        """Refuse to remove or demote the last admin: nobody could manage accounts after it
        (except through the CLI on the server itself)."""
        if user.role != "admin":
            return
        row = self.db.one("SELECT COUNT(*) FROM users WHERE role = 'admin'")
        if row is not None and int(row[0]) <= 1:
            raise UsageError(
                f"{user.name!r} is the last admin: add another admin before you {verb} it"
            )

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches, else None. Costs one Argon2 hash either way.

        An unknown name still pays for a hash, so response time does not reveal which names
        exist.
        """
        row = self.db.one("SELECT * FROM users WHERE name = ?", (name,))
        if not _encodable(password):  # no stored password is such: deny at the same cost
            password, row = "x", None
        if row is None:
            self.hasher.hash(password or "x")
            return None
        try:
            ok, new_hash = self.hasher.verify_and_update(password, row["password_hash"])
        except Exception:  # a damaged hash in the database: deny, never crash the login
            return None
        if not ok:
            return None
        if new_hash:  # parameters changed since it was made: store the stronger hash
            self.db.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", (new_hash, row["id"])
            )
        return _user(row)

    # ----------------------------------------------------------------- tokens
    def create_token(
        self,
        user_name: str,
        name: str = "",
        *,
        expires_in_s: float | None = None,
        apps: list[str] | None = None,
    ) -> tuple[str, Token]:
        """A new token for a user: (the token text, shown once; its record). ``name`` is a
        label (default "token"); ``expires_in_s`` at most 100 years (None: never). Raises
        UsageError for a name that is not 1-100 characters of printable text or a longer
        lifetime, NotFound for an unknown user."""
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_TOKEN_LIFETIME_S:
            # One far beyond (99999999999d) was stored, then every token list, the admin page
            # and `token list` failed to show its expiry (a year past 9999).
            raise UsageError(
                "a token lasts at most 100 years (100y); leave out the expiry for one that never expires"
            )
        if name and not TOKEN_NAME_RE.match(name):
            raise UsageError(
                f"token name {name!r} is not usable: give 1-100 characters without control characters"
            )
        user = self.user(user_name)
        if apps and user.apps is not None and not set(apps) <= set(user.apps):
            extra = ", ".join(sorted(set(apps) - set(user.apps)))
            raise UsageError(f"user {user.name!r} has no access to {extra}: a token cannot add any")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        self.db.execute(
            "INSERT INTO tokens (id, user_id, name, secret_hash, apps, created_at, expires_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (token_id, user.id, name or "token", _digest(secret), _apps_json(apps), now,
             None if expires_in_s is None else now + expires_in_s),
        )  # fmt: skip
        token = self.token(token_id)
        return f"cbt_{token_id}_{secret}", token

    def token(self, token_id: str) -> Token:
        row = self.db.one("SELECT * FROM tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return self._token(row)

    def _token(self, row: Any) -> Token:
        user = self.user_by_id(row["user_id"])
        assert user is not None  # ON DELETE CASCADE
        return Token(row["id"], user, row["name"], _apps(row["apps"]), row["created_at"],
                     row["expires_at"], row["revoked_at"], row["last_used_at"])  # fmt: skip

    def tokens(self, user_name: str | None = None) -> list[Token]:
        if user_name is None:
            rows = self.db.query("SELECT * FROM tokens ORDER BY created_at")
        else:
            user = self.user(user_name)
            rows = self.db.query(
                "SELECT * FROM tokens WHERE user_id = ? ORDER BY created_at", (user.id,)
            )
        return [self._token(r) for r in rows]

    def revoke_token(self, token_id: str) -> Token:
        token = self.token(token_id)
        if token.revoked_at is None:
            self.db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), token_id)
            )
        return self.token(token_id)

    def check_token(self, text: str, now: float | None = None) -> Token | None:
        """The token's record if ``text`` is a live token, else None (unknown, expired, revoked)."""
        m = TOKEN_RE.match(text)
        if m is None:
            return None
        row = self.db.one("SELECT * FROM tokens WHERE id = ?", (m.group(1),))
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), _digest(m.group(2))):
            return None
        token = self._token(row)
        now = time.time() if now is None else now
        if not token.usable(now):
            return None
        # Recording every use would write on every request; once a minute is enough to see it.
        if token.last_used_at is None or now - token.last_used_at > 60:
            try:
                self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token.id))
            except StorageError as exc:  # a full state disk: the token still works (reads do)
                log.warning("token %s: last use not recorded: %s", token.id, exc)
        return token

    # ----------------------------------------------------------------- sessions
    def create_session(self, user: User, ttl_s: float, address: str | None) -> tuple[str, str]:
        """A browser session: (cookie value, CSRF token)."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = time.time()
        self.db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        self.db.execute(
            "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at, address)"
            " VALUES (?,?,?,?,?,?)",
            (_digest(cookie), user.id, csrf, now, now + ttl_s, address),
        )
        return cookie, csrf

    def check_session(self, cookie: str, now: float | None = None) -> tuple[User, str] | None:
        """(user, CSRF token) for a live session cookie, else None."""
        if not cookie or len(cookie) > 128:
            return None
        row = self.db.one("SELECT * FROM sessions WHERE id_hash = ?", (_digest(cookie),))
        now = time.time() if now is None else now
        if row is None or row["expires_at"] <= now:
            return None
        user = self.user_by_id(row["user_id"])
        return None if user is None else (user, row["csrf"])

    def end_session(self, cookie: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (_digest(cookie),))


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _encodable(password: str) -> bool:
    """Whether the password is text a browser can send (UTF-8): bytes read from a pipe that
    are not UTF-8, or a JSON string with a lone surrogate escape, are not."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_password(password: str) -> None:
    if not _encodable(password):
        raise UsageError("the password is not UTF-8 text: give one that can be typed at the login")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UsageError("the password must have at most 1024 characters")


_DURATION_RE = re.compile(r"^(\d+)([smhdwy])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``1y`` -> seconds. Raises UsageError otherwise."""
    m = _DURATION_RE.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise UsageError(f"{text!r} is not a duration: use a number and s, m, h, d, w or y (90d)")
    return float(int(m.group(1)) * _SECONDS[m.group(2)])
