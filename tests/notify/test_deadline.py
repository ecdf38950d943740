"""A network notifier's timeout bounds the whole exchange, not each read: a receiver that
trickles one byte at a time held a webhook with timeout = 2 (and the backup waiting on it)
for as long as it kept trickling."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event, dispatch


@contextmanager
def trickler(first: bytes, then: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that sends ``first`` at once, then ``then`` one byte every
    0.3 s, forever; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(0.5)
                try:
                    conn.recv(65536)
                except TimeoutError:
                    pass
                conn.sendall(first)
                while not stop.is_set():
                    for i in range(len(then)):
                        conn.sendall(then[i : i + 1])
                        time.sleep(0.3)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


def _send(cfg: NotifierConfig) -> tuple[list[str], float]:
    start = time.monotonic()
    warnings = dispatch((cfg,), Event("success", "a"), offline_mode=False)
    return warnings, time.monotonic() - start


def test_webhook_whose_answer_never_completes_is_stopped() -> None:
    with trickler(b"HTTP/1.1 ", b"2") as port:  # a status line that never ends
        url = f"http://127.0.0.1:{port}/hook"
        warnings, took = _send(NotifierConfig(type="webhook", url=url, timeout=2))
    assert took < 30, took  # a hang guard: the trickle never ends (a tight limit flaked)
    assert warnings == [
        f"notifier webhook({url}) failed for event success: "
        f"{url}: no complete answer within 2 s: stopped"
    ]


def test_webhook_answered_200_with_a_trickling_body_is_delivered() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    with trickler(head, b"x") as port:
        cfg = NotifierConfig(type="webhook", url=f"http://127.0.0.1:{port}/h", timeout=2)
        warnings, took = _send(cfg)
    assert warnings == [] and took < 30, (warnings, took)  # a hang guard: the trickle never ends


def test_smtp_greeting_that_never_completes_is_stopped() -> None:
    with trickler(b"220-", b"slow greeting\r\n220-") as port:
        cfg = NotifierConfig(type="email", host="127.0.0.1", port=port, sender="a@b",
                             to=("c@d",), timeout=2)  # fmt: skip
        warnings, took = _send(cfg)
    assert took < 30, took  # a hang guard: the trickle never ends (a tight limit flaked)
    assert len(warnings) == 1 and warnings[0].endswith(
        f"SMTP 127.0.0.1:{port}: no complete answer within 2 s: stopped"
    ), warnings


# A TLS record header promising a 16 KiB handshake message, whose body then trickles: the
# client's handshake waits for it, a byte at a time.
_SLOW_TLS = b"\x16\x03\x03\x40\x00"


def test_https_handshake_that_never_completes_is_stopped() -> None:
    """The deadline watches the plain socket, which the TLS wrap detaches; the handshake is
    bounded all the same: CPython's ssl applies the socket timeout to the whole handshake
    (one deadline across its reads), not to each read. (Stop 28 listed this as a gap.)"""
    with trickler(_SLOW_TLS, b"\x02") as port:
        url = f"https://127.0.0.1:{port}/hook"
        warnings, took = _send(NotifierConfig(type="webhook", url=url, timeout=2))
    assert took < 30, took  # a hang guard: the trickle never ends (a tight limit flaked)
    assert len(warnings) == 1 and "no complete answer within 2 s" in warnings[0], warnings


def test_smtp_starttls_handshake_that_never_completes_is_stopped() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                f = conn.makefile("rb")
                conn.sendall(b"220 hello\r\n")
                f.readline()  # EHLO
                conn.sendall(b"250-here\r\n250 STARTTLS\r\n")
                f.readline()  # STARTTLS
                conn.sendall(b"220 go ahead\r\n")
                conn.sendall(_SLOW_TLS)
                while not stop.is_set():
                    conn.sendall(b"\x02")
                    time.sleep(0.3)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    port = server.getsockname()[1]
    try:
        cfg = NotifierConfig(type="email", host="127.0.0.1", port=port, sender="a@b",
                             to=("c@d",), timeout=2)  # fmt: skip
        warnings, took = _send(cfg)
    finally:
        stop.set()
        server.close()
    assert took < 30, took  # a hang guard: the trickle never ends (a tight limit flaked)
    assert len(warnings) == 1 and "no complete answer within 2 s" in warnings[0], warnings
