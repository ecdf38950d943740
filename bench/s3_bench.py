"""S3 on loopback against SeaweedFS (``weed mini``): first backup and restore against a
local folder, and the requests and bytes of each scenario (init, first backup, unchanged
re-backup with this client's caches, the same from a new client with empty caches, about 1%
changed, restore, check --read-data, a folder dumped as tar, a copy out of the store).

    python -m bench.s3_bench [--mib 128] [--files 1500]

Times are wall-clock and CPU (user+sys of the child, from getrusage) of the real
``casbackup`` command, run directly against the server. Requests and bytes are counted by a
pass-through proxy (tests/store/conftest.py's FaultProxy with no faults), used only for the
counted runs so its own cost never enters a timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.corpus import CorpusSpec, build_corpus, compare_trees

MiB = 1 << 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_weed(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = [_free_port() for _ in range(11)]
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "s3.json"
    conf.write_text(
        '{"identities": [{"name": "b", "credentials": [{"accessKey": "bench", '
        '"secretKey": "bench-secret"}], "actions": ["Admin", "Read", "Write", "List"]}]}'
    )
    names = ["s3.port", "master.port", "volume.port", "filer.port", "webdav.port", "admin.port",
             "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc",
             "admin.port.grpc"]  # fmt: skip
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", f"-s3.config={conf}"]
    cmd += [f"-{n}={p}" for n, p in zip(names, ports, strict=True)]
    # Its Iceberg and Lance listeners take fixed ports on every address: off, or a second
    # weed on the machine (a test session's) makes one of them exit.
    cmd += ["-s3.port.iceberg=0", "-s3.port.lance=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports[0]}"
    import http.client

    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            return proc, endpoint
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("weed mini did not start")


def run(repo: str, *args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one ``casbackup`` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "casbackup.cli.main", "-r", repo, *args],
                         capture_output=True)  # fmt: skip
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"{args[0]} failed: {res.stderr.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def kinds_of(seen: list[tuple[str, str]]) -> dict[str, int]:
    """Requests by method and top-level folder of the repository (LIST by prefix)."""
    kinds: dict[str, int] = {}
    for method, path in seen:
        rest = path.split("?", 1)[0].split("/")[3:]  # after /bucket/repo/
        what = f"{method} {rest[0] if rest else '(bucket)'}"
        if "list-type" in path:
            what = f"LIST {path.split('prefix=', 1)[-1][:30]}"
        kinds[what] = kinds.get(what, 0) + 1
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--files", type=int, default=1500)
    opts = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", CASBACKUP_PASSWORD="bench")  # fmt: skip
    import boto3

    from bench.corpus import mutate_corpus
    from tests.store.conftest import FaultProxy

    spec = CorpusSpec(total_bytes=opts.mib * MiB, n_files=opts.files)
    counted: list[tuple[str, int, int, int, dict[str, int]]] = []
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        work = Path(tmp)
        src = work / "src"
        build_corpus(src, spec)
        proc, endpoint = start_weed(work / "weed")
        try:
            bucket = f"b{uuid.uuid4().hex[:12]}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
            # A fresh SeaweedFS allocates its volumes on the first writes (measured: the
            # first backup into a new server took 9 s, the next ones 5.5 s): warm it up
            # so the timing is the client's, not the server's start.
            client.create_bucket(Bucket=f"{bucket}-warm")
            for i in range(8):
                client.put_object(Bucket=f"{bucket}-warm", Key=f"w{i}", Body=os.urandom(8 * MiB))
            repos = {"local": str(work / "repo"), "s3": f"s3:{endpoint}/{bucket}/repo"}
            rows = []
            for kind, repo in repos.items():
                os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}")
                run(repo, "init")
                backup = run(repo, "backup", str(src))
                os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}-restore")
                restore = run(repo, "restore", "latest", "--target", str(work / f"r-{kind}"))
                assert not compare_trees(src, work / f"r-{kind}" / src.relative_to("/"))
                rows.append((kind, backup, restore))
            proxy = FaultProxy(endpoint, lambda n: None)
            repo = f"s3:{proxy.endpoint}/{bucket}/counted"

            def count(name: str, *args: str, cache: str = "client", on: str = "") -> None:
                os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{cache}")
                n0, up0, down0, seen0 = (proxy.count, proxy.bytes_up, proxy.bytes_down,
                                         len(proxy.seen))  # fmt: skip
                run(on or repo, *args)
                counted.append((name, proxy.count - n0, proxy.bytes_up - up0,
                                proxy.bytes_down - down0, kinds_of(proxy.seen[seen0:])))  # fmt: skip

            count("init", "init")
            count("first backup", "backup", str(src))
            count("unchanged re-backup", "backup", str(src))
            count("unchanged, new client (empty caches)", "backup", str(src), cache="new")
            mutate_corpus(src, spec)
            count("about 1% changed", "backup", str(src))
            count("restore latest", "restore", "latest", "--target", str(work / "r-counted"))
            # Readers that read every stored byte (each a get per chunk or blob until
            # 2026-12-03): data check, a folder as one archive, a copy out of the store.
            count("check --read-data", "check", "--read-data")
            count("dump latest:SRC as tar", "dump", f"latest:{src}", "--target",
                  str(work / "dump.tar"))  # fmt: skip
            out = str(work / "copy-out")
            run(out, "init")
            os.environ["CASBACKUP_FROM_PASSWORD"] = "bench"
            count("copy into a local repository", "copy", "--from-repo", repo, on=out)
            proxy.close()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # never hide what stopped the run
                proc.kill()
                proc.wait()
    print(f"corpus: {opts.mib} MiB in {opts.files} files")
    for kind, (bw, bc), (rw, rc) in rows:
        print(f"{kind:6} first backup {bw:6.1f} s ({bc:6.1f} s CPU)   "
              f"restore {rw:6.1f} s ({rc:6.1f} s CPU)")  # fmt: skip
    (_, (lbw, lbc), (lrw, lrc)), (_, (sbw, sbc), (srw, src_)) = rows
    print(f"s3/local: backup {sbw / lbw:.2f}x wall {sbc / lbc:.2f}x CPU, "
          f"restore {srw / lrw:.2f}x wall {src_ / lrc:.2f}x CPU")  # fmt: skip
    print("requests and bytes per scenario (through a counting proxy):")
    for name, n, up, down, kinds in counted:
        print(f"  {name:40} {n:6} requests  {up / MiB:9.2f} MiB up  {down / MiB:9.2f} MiB down")
        top = sorted(kinds.items(), key=lambda kv: -kv[1])[:6]
        print("      " + ", ".join(f"{what}: {k}" for what, k in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
