"""A repository in an S3-compatible bucket (MinIO, Ceph RGW, SeaweedFS, AWS S3, ...).

Location (restic's syntax): ``s3:http://HOST:PORT/BUCKET/PREFIX`` or ``s3:https://...``;
``s3:HOST/BUCKET/PREFIX`` means https. Path-style requests by default (what self-hosted
servers expect); ``CASBACKUP_S3_ADDRESSING=virtual`` (or the config's
``repository.s3_addressing``) asks for virtual-hosted ones.

Client: obstore (Rust's object_store). Measured on this machine kind (issue 14): 1.0 s CPU
per GiB put against boto3's 2.0, and it releases the GIL while it transfers, so a pack
upload does not stall chunking and hashing in the other threads (boto3's put rate fell
tenfold beside one busy Python thread; obstore's by a third). It also offers create-only
writes (``If-None-Match: *``), which lock files use where the server honours them.

Semantics kept from store/base.py: a ``put`` is one PUT request (never multipart), which
S3 makes atomic: a reader sees the whole object or none. ``get`` with a length is one
ranged GET, checked to return exactly that many bytes. S3 answers a DELETE of a missing
key with success, so ``delete`` asks HEAD first (a race with another deleter may hide a
NotFound; both wanted the object gone). Every name passes store/names.py's rules before
any request, and every listed key that is not one is an odd entry, never read or deleted.

Retries are not done here: obstore's own are switched off and store/retry.py wraps the
backend, so there is one retry policy with one bound. Errors leave this module as
casbackup's own: NotFound, StorageError (permanent: 403, no such bucket, bad
credentials) and TransientStorageError (timeouts, 5xx, throttling, resets).
"""

from __future__ import annotations

import configparser
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from casbackup.errors import NotFound, StorageError, TransientStorageError, UsageError
from casbackup.store import stopping
from casbackup.store.names import (
    ObjectRefused,
    SkippedEntries,
    check_name,
    check_size,
    is_folder,
    is_temp_name,
    rule_for,
)
from casbackup.threadsig import quiet_thread

T = TypeVar("T")

#: The HTTP status obstore reports, when the server answered at all.
_STATUS = re.compile(r"status code: (\d{3})|status: (\d{3})")
#: Statuses that may succeed when asked again: timeout, throttling, server trouble.
_TRANSIENT = {408, 429, 500, 502, 503, 504}
_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")
_NO_BUCKET = re.compile(r"<Code>NoSuchBucket</Code>|NoSuchBucket")


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3:`` location: where the server is and where the repository lies in it."""

    endpoint: str  # scheme://host[:port]
    bucket: str
    prefix: str  # "" or a path without leading/trailing slashes

    def __str__(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"s3:{self.endpoint}/{self.bucket}{tail}"


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _bucket_problem(bucket: str) -> str:
    """Why ``bucket`` is not a valid S3 bucket name (it failed ``_BUCKET``)."""
    if not 3 <= len(bucket) <= 63:
        return f"is {len(bucket)} characters long; bucket names have 3 to 63"
    if bucket != bucket.lower():
        return "has capital letters; bucket names are lower case"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return "must begin and end with a letter or digit"
    return "may hold only lower-case letters, digits, '.' and '-'"


def parse_location(location: str) -> S3Location:
    """Parse ``s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`` (or ``s3:HOST/BUCKET[/PREFIX]``,
    https); raises UsageError with one line for anything else."""
    if not location.startswith("s3:"):
        raise UsageError(f"not an S3 location: {location!r}")
    rest = location[3:]
    scheme = "https"
    for candidate in ("http", "https"):
        if rest.startswith(f"{candidate}://"):
            scheme, rest = candidate, rest[len(candidate) + 3 :]
            break
    host, _, path = rest.partition("/")
    bucket, _, prefix = path.partition("/")
    prefix = prefix.rstrip("/")  # a trailing slash is harmless; "//" inside is not
    if "@" in host:  # secrets only by environment or file, never in a location
        raise UsageError(
            "bad S3 location: credentials in it are refused; use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if not host or not bucket:
        raise UsageError(
            f"bad S3 location {location!r}: expected s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]"
        )
    if not _BUCKET.fullmatch(bucket):
        # The S3 rules for bucket names (AWS's "Bucket naming rules"; MinIO, Ceph and
        # SeaweedFS follow them): say which one the name breaks, not only that it is bad.
        raise UsageError(
            f"bad S3 location {location!r}: bucket {bucket!r} {_bucket_problem(bucket)}"
        )
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"bad S3 location {location!r}: the prefix has an empty or dot part")
    return S3Location(f"{scheme}://{host}", bucket, prefix)


def _profile_credentials(profile: str) -> dict[str, str]:
    """Keys of ``profile`` in ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE) and the
    region from ~/.aws/config (or AWS_CONFIG_FILE), as the AWS tools read them."""
    home = os.path.expanduser("~")
    found: dict[str, str] = {}
    creds = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, ".aws", "credentials"))
    conf = os.environ.get("AWS_CONFIG_FILE", os.path.join(home, ".aws", "config"))
    for path, section in (
        (creds, profile),
        (conf, profile if profile == "default" else f"profile {profile}"),
    ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read AWS file {path}: {exc}".splitlines()[0]) from None
        if parser.has_section(section):
            for key in (
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "region",
            ):
                if parser.has_option(section, key):
                    found.setdefault(key, parser.get(section, key).strip())
    if "aws_access_key_id" not in found:
        raise UsageError(f"AWS profile {profile!r} has no aws_access_key_id in {creds}")
    return found


def credentials(settings: dict[str, str] | None = None) -> dict[str, str]:
    """obstore S3 config keys for credentials and region: the AWS_* variables first, then
    AWS_PROFILE's files, then the config file's repository section (``settings``:
    ``s3_region``, ``s3_access_key_id`` with ``s3_secret_access_key_file`` or
    ``s3_secret_access_key_env``; a secret is never written in the config itself).
    Raises UsageError (one line) for an unreadable file, an unset variable, a bad profile."""
    settings = settings or {}
    env = os.environ
    out: dict[str, str] = {}
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        out["access_key_id"] = env["AWS_ACCESS_KEY_ID"]
        out["secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            out["token"] = env["AWS_SESSION_TOKEN"]
    elif env.get("AWS_PROFILE"):
        found = _profile_credentials(env["AWS_PROFILE"])
        out["access_key_id"] = found["aws_access_key_id"]
        out["secret_access_key"] = found.get("aws_secret_access_key", "")
        if found.get("aws_session_token"):
            out["token"] = found["aws_session_token"]
        if found.get("region"):
            out["region"] = found["region"]
    elif settings.get("s3_access_key_id") and settings.get("s3_secret_access_key_env"):
        name = settings["s3_secret_access_key_env"]
        if not env.get(name):
            raise UsageError(
                f"the config's repository.s3_secret_access_key_env names {name}, which is not set"
            )
        out["access_key_id"] = settings["s3_access_key_id"]
        out["secret_access_key"] = env[name].strip()
    elif settings.get("s3_access_key_id") and settings.get("s3_secret_access_key_file"):
        path = settings["s3_secret_access_key_file"]
        try:
            with open(path, "rb") as f:
                secret = f.read(4097)
        except OSError as exc:
            raise UsageError(f"cannot read S3 secret key file {path}: {exc.strerror}") from None
        if len(secret) > 4096:
            raise UsageError(f"S3 secret key file {path} holds more than 4 KiB: not a key")
        out["access_key_id"] = settings["s3_access_key_id"]
        out["secret_access_key"] = secret.decode("utf-8", "replace").strip()
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or out.get("region")
    out["region"] = region or settings.get("s3_region") or "us-east-1"
    return out


def status_of(exc: BaseException) -> int | None:
    """The HTTP status in an obstore error, or None when no answer came (a transport
    failure: refused, reset, timed out, cut mid-body)."""
    match = _STATUS.search(str(exc))
    return int(match.group(1) or match.group(2)) if match else None


def classify(exc: BaseException, what: str, *, unsigned: bool = False) -> Exception:
    """One casbackup error for an obstore failure while ``what`` (a one-line message);
    ``unsigned``: the request went without a signature (no credentials were found).

    Permanent (StorageError): 401/403, no such bucket, other 4xx. Transient
    (TransientStorageError, retried by store/retry.py): 408, 429, 5xx and failures with
    no HTTP answer at all. Missing objects: NotFound."""
    from obstore import exceptions as oe

    text = str(exc)
    status = status_of(exc)
    if _NO_BUCKET.search(text):
        return StorageError(
            f"{what}: no such bucket (casbackup does not create buckets: create it first)"
        )
    if isinstance(exc, oe.NotFoundError | FileNotFoundError) or status == 404:
        return NotFound(f"{what}: missing from the repository")
    if isinstance(exc, oe.PermissionDeniedError | oe.UnauthenticatedError) or status in (401, 403):
        if unsigned:
            return StorageError(
                f"{what}: access denied to an unsigned request: no S3 credentials were found "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or "
                "s3_access_key_id in the config file's [repository])"
            )
        return StorageError(f"{what}: access denied (check the S3 credentials and bucket policy)")
    if status == 416:
        return StorageError(f"{what}: range not satisfiable")
    code = _CODE.search(text)
    if status is not None:
        said = f"the server answered {status}" + (f" ({code.group(1)})" if code else "")
    else:  # no answer: say what the transport said, without obstore's debug dump
        said = " ".join(text.split("Debug source:", 1)[0].split())
        said = re.sub(r"^Generic S3 error: ", "", said)[:160]
    if status is None or status in _TRANSIENT:
        return TransientStorageError(f"{what}: {said}")
    return StorageError(f"{what}: {said}")


_runtime_lock = threading.Lock()
_runtime_started = False


def _start_runtime_quietly() -> None:
    """Start obstore's (process-wide, tokio) runtime from a thread that blocks the stop
    signals, once: its worker threads inherit that mask, so that SIGINT/SIGTERM/SIGHUP keep
    going to our main thread (casbackup/threadsig.py). Started from the main thread instead,
    they would take such signals, and a main thread waiting would not wake. Best effort: a
    failure here leaves the runtime to start at the first request, as before."""
    global _runtime_started
    import obstore
    from obstore.store import MemoryStore

    def start() -> None:
        try:
            obstore.put(MemoryStore(), "start", b"")  # any call builds the runtime
        except Exception:
            pass  # the first real request starts it, with the caller's mask

    with _runtime_lock:
        if _runtime_started:
            return
        thread = quiet_thread(start, name="obstore-start")
        thread.start()
        thread.join()
        _runtime_started = True


class S3Backend:
    """Objects as keys ``<prefix>/<name>`` in one bucket (see the module docstring)."""

    #: obstore's runtime threads do not survive ``fork``: a forked helper that uses this
    #: backend hangs (measured), so code that forks helpers reads in-process instead.
    fork_safe = False
    #: Every request crosses a network: the repository keeps trees in a local cache.
    remote = True

    def __init__(
        self,
        location: str,
        *,
        settings: dict[str, str] | None = None,
        timeout_seconds: float = 120.0,
    ) -> None:
        try:
            from obstore.store import S3Store
        except ImportError:
            raise UsageError(
                "S3 repositories need the obstore package (a dependency of casbackup): pip install obstore"
            ) from None
        self.where = parse_location(location)
        self.location = str(self.where)
        settings = settings or {}
        addressing = os.environ.get("CASBACKUP_S3_ADDRESSING") or settings.get(
            "s3_addressing", "path"
        )
        if addressing not in ("path", "virtual"):
            raise UsageError(f"s3 addressing must be 'path' or 'virtual', not {addressing!r}")
        config: dict[str, Any] = dict(credentials(settings))
        config["endpoint"] = self.where.endpoint
        config["virtual_hosted_style_request"] = addressing == "virtual"
        self.unsigned = "access_key_id" not in config
        if self.unsigned:
            config["skip_signature"] = True  # a public bucket; the server decides
        client = {
            "allow_http": self.where.endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=10),
            "timeout": timedelta(seconds=timeout_seconds),
        }
        retry = {"max_retries": 0, "retry_timeout": timedelta(seconds=timeout_seconds)}
        _start_runtime_quietly()
        try:
            self._store = S3Store(
                self.where.bucket,
                prefix=self.where.prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options=client,  # type: ignore[arg-type]
                retry_config=retry,  # type: ignore[arg-type]
            )
        except Exception as exc:  # obstore's config errors
            raise UsageError(
                f"bad S3 settings for {self.location}: {exc}".splitlines()[0]
            ) from None
        self.skipped = SkippedEntries()
        self.requests = 0  # requests sent (bench/ counts them)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self.requests += 1
        try:
            return stopping.call(fn, self, what)
        except Exception as exc:
            if type(exc).__module__.startswith("obstore") or isinstance(exc, OSError):
                raise classify(exc, what, unsigned=self.unsigned) from None
            raise

    # ------------------------------------------------------------------ writes
    def put(self, name: str, data: bytes | memoryview) -> None:
        """One PUT of the whole object (atomic in S3: never a prefix)."""
        import obstore

        check_name(name)
        self._call(
            f"writing {name}",
            lambda: obstore.put(self._store, name, data, use_multipart=False),
        )

    def put_new(self, name: str, data: bytes | memoryview) -> bool:
        """Create ``name`` only if no object has it (``If-None-Match: *``); False when one
        does. On servers that ignore the header this is a plain put (repo_format.md)."""
        import obstore
        from obstore import exceptions as oe

        check_name(name)
        try:
            self.requests += 1
            stopping.call(
                lambda: obstore.put(self._store, name, data, mode="create", use_multipart=False),
                self,
                f"writing {name}",
            )
        except (oe.AlreadyExistsError, oe.PreconditionError):
            return False
        except Exception as exc:
            raise classify(exc, f"writing {name}", unsigned=self.unsigned) from None
        return True

    # ------------------------------------------------------------------ reads
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        import obstore

        rule = check_name(name)
        if length is None:
            result = self._call(f"reading {name}", lambda: obstore.get(self._store, name))
            size = int(result.meta["size"])
            check_size(name, size, rule)  # before the body is read: no 4 GiB allocation
            data = self._call(f"reading {name}", lambda: bytes(result.bytes()))
            if len(data) != size:
                raise TransientStorageError(f"reading {name}: got {len(data)} of its {size} bytes")
            if offset > size:
                raise StorageError(f"{name} is truncated: it has {size} bytes, not {offset}")
            return data[offset:]
        if length == 0:
            size = self.stat(name)
            if offset > size:
                raise StorageError(
                    f"{name} is truncated: wanted 0 bytes at offset {offset}, it has {size}"
                )
            return b""
        try:
            data = self._call(
                f"reading {name}",
                lambda: bytes(obstore.get_range(self._store, name, start=offset, length=length)),
            )
        except StorageError as exc:
            if isinstance(exc, TransientStorageError) or "range not satisfiable" not in str(exc):
                raise
            data = b""  # a range wholly past the end: reported below with the sizes
        if len(data) != length:
            raise StorageError(
                f"{name} is truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def _head(self, name: str) -> dict[str, Any]:
        import obstore

        check_name(name)
        return dict(self._call(f"reading {name}", lambda: obstore.head(self._store, name)))

    def stat(self, name: str) -> int:
        check_name(name)
        return int(self._head(name)["size"])

    def exists(self, name: str) -> bool:
        check_name(name)
        try:
            self._head(name)
        except NotFound:
            return False
        return True

    def modified(self, name: str) -> float:
        """When an object was last written, in seconds since the epoch (the server's
        Last-Modified): prune leaves young unindexed packs alone (another client's
        backup may still be writing its index)."""
        return float(self._head(name)["last_modified"].timestamp())

    # ------------------------------------------------------------------ deletes
    def delete(self, name: str) -> None:
        import obstore

        check_name(name)
        self._head(name)  # NotFound for a missing object: S3's DELETE would not say
        self._call(f"deleting {name}", lambda: obstore.delete(self._store, name))

    # ------------------------------------------------------------------ listing
    def _keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every key under ``prefix`` and its size. obstore lists by path segments, so
        the folder part of ``prefix`` is listed and the rest filtered here; pagination
        (ListObjectsV2 continuation tokens) happens inside obstore's stream."""
        import obstore

        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else None
        stream = self._call(
            f"listing {self.location}",
            lambda: obstore.list(self._store, prefix=folder, chunk_size=1000),
        )
        while True:
            batch = self._call(f"listing {self.location}", lambda: next(stream, None))
            if batch is None:
                return
            for meta in batch:
                key = str(meta["path"])
                if key.startswith(prefix):
                    yield key, int(meta["size"])

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for name, size in self._keys(prefix):
            if rule_for(name) is not None:
                yield name, size
            elif not is_temp_name(name) and not _folder_marker(name, size):
                self.skipped.add(name, "is not a name the repository format uses")

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(name, why) of every key under ``prefix`` whose name the format never writes."""
        for name, size in self._keys(prefix):
            if rule_for(name) is None and not is_temp_name(name) and not _folder_marker(name, size):
                yield name, "is not a name the repository format uses"

    def close(self) -> None:
        pass


def _folder_marker(name: str, size: int) -> bool:
    """An empty ``index/`` (listed as ``index``) or ``PREFIX/`` key: the "folder" that S3
    consoles and some tools create. It holds nothing and is never read: not an odd entry."""
    return size == 0 and (name == "" or is_folder(name))


__all__ = ["ObjectRefused", "S3Backend", "S3Location", "classify", "credentials", "parse_location"]


def open_s3(location: str, settings: dict[str, str] | None = None) -> Any:
    """The ``s3`` backend plugin (plugins.py): an S3Backend inside the one retry wrapper
    (store/retry.py). Raises UsageError for a bad location or settings."""
    from casbackup.store.retry import RetryingBackend, retry_settings

    tuning = retry_settings()
    return RetryingBackend(
        S3Backend(location, settings=settings),
        attempts=int(tuning.get("attempts", 7)),
        base=tuning.get("base", 0.25),
    )


# Its network use is the configured repository's own: offline mode keeps it on.
open_s3.uses_network = False  # type: ignore[attr-defined]
