"""HTTP front end: GET / lists recent notes, POST / adds one. Run: python -m notes.server."""

from __future__ import annotations

import html
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from string import Template
from urllib.parse import parse_qs

from notes import __version__
from notes.db import APP_DIR, add_note, connect, recent_notes, settings

PAGE = Template((APP_DIR / "templates" / "index.html").read_text(encoding="utf-8"))


class NotesHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with connect() as conn:
            items = "\n".join(
                f"<li><h2>{html.escape(n['title'])}</h2><p>{html.escape(n['body'])}</p>"
                f"<small>{n['created']} {html.escape(n['tags'] or '')}</small></li>"
                for n in recent_notes(conn)
            )
        body = PAGE.substitute(notes=items, version=__version__).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        with connect() as conn:
            add_note(conn, form.get("title", [""])[0], form.get("body", [""])[0])
        self.send_response(303)
        self.send_header("Location", "/")
        self.end_headers()


def main() -> None:
    cfg = settings()
    address = (
        cfg.get("server", "host", fallback="127.0.0.1"),
        cfg.getint("server", "port", fallback=8080),
    )
    ThreadingHTTPServer(address, NotesHandler).serve_forever()


if __name__ == "__main__":
    main()
