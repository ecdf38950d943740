"""Cold unchanged re-backups as service jobs (`casbackup serve`, POST /api/backup), A/B
between code trees: the job's duration as the API reports it, and the CPU of its worker.

    python -m bench.serve_job_ab --tree old=/path/to/old --tree new=. --corpus DIR [--reps 4]
        [--app web|sys] [--nice -20]

One service per tree (its own state folder, port, repository and cache), all running at
once and idle but for the job being timed; the corpus and its applications as in
bench/rebackup_all_ab.py (one application's backup per job). Before each timed job the
page cache is dropped; the trees take turns, the order rotating every repetition. CPU: the
service's children's user+sys (/proc/PID/stat cutime+cstime: the worker and its readers,
waited for) before and after the job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.measure import drop_caches
from bench.rebackup_ab import PASSWORD, SCRIPT
from bench.rebackup_all_ab import APPS

TICK = os.sysconf("SC_CLK_TCK")


def children_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICK  # cutime, cstime


class Service:
    def __init__(self, name: str, tree: Path, work: Path, src: Path, port: int,
                 nice: int | None = None) -> None:  # fmt: skip
        self.name, self.port = name, port
        home = work / name
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        self.env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_REPO_PW": PASSWORD,
                    "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "xstate")}  # fmt: skip
        self.env.pop("CASBACKUP_PASSWORD", None)
        cfg = home / "casbackup.toml"
        lines = [
            "[repository]",
            f'location = "{home / "repo"}"',
            'password_env = "BENCH_REPO_PW"',
            "",
        ]
        for app, folders in APPS.items():
            sources = ", ".join(f'"{src / f}"' for f in folders)
            lines += ["[[applications]]", f'name = "{app}"', f"sources = [{sources}]", ""]
        cfg.write_text("\n".join(lines))
        state = str(home / "state")
        self.cli(["init"], repo=str(home / "repo"))
        self.cli(["--config", str(cfg), "backup", "--all", "--type", "full"])
        self.cli(["user", "add", "admin", "--role", "admin", "--password-stdin", "--state-dir", state],
                 stdin=b"bench-admin-password\n")  # fmt: skip
        self.token = self.cli(["token", "create", "--user", "admin", "--name", "bench",
                               "--state-dir", state]).strip()  # fmt: skip
        prefix = ["nice", "-n", str(nice)] if nice is not None else []
        self.proc = subprocess.Popen(
            [*prefix, str(SCRIPT), "--config", str(cfg), "serve", "--state-dir", state, "--no-scheduler",
             "--listen", f"127.0.0.1:{port}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(home / "serve.err", "wb"),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(
                        f"{name}: the service did not start ({home}/serve.err)"
                    ) from None
                time.sleep(0.3)

    def cli(self, args: list[str], *, repo: str | None = None,
            stdin: bytes | None = None) -> str:  # fmt: skip
        env = dict(self.env)
        if repo:
            env["CASBACKUP_PASSWORD"] = PASSWORD
            args = ["-r", repo, *args]
        out = subprocess.run(
            [str(SCRIPT), *args], env=env, input=stdin, capture_output=True, check=True
        )
        return out.stdout.decode()

    def api(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def job(self, app: str) -> tuple[float, float]:
        """(duration_s from the API, CPU s of the worker) of one backup job of ``app``."""
        cpu0 = children_cpu_s(self.proc.pid)
        job_id = self.api("POST", "/api/backup", {"app_name": app, "backup_type": "incremental"})[
            "job_id"
        ]
        while True:
            doc = self.api("GET", f"/api/jobs/{job_id}")
            if doc["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
                break
            time.sleep(0.2)
        if doc["state"] != "succeeded":
            raise SystemExit(f"{self.name}: job {job_id} {doc['state']}: {doc['error']}")
        return float(doc["duration_s"]), children_cpu_s(self.proc.pid) - cpu0  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH (holds casbackup/)")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--app", default="sys", choices=sorted(APPS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/serve-job-ab"))
    ap.add_argument("--corpus", type=Path, required=True, help="a bench/corpus.py tree")
    ap.add_argument("--nice", type=int, default=None, help="niceness of the services (and jobs)")
    args = ap.parse_args(argv)
    if not drop_caches():
        raise SystemExit("the page cache cannot be dropped (root only): cold runs impossible")
    trees = {n: Path(p).resolve() for n, _, p in (t.partition("=") for t in args.tree)}
    services: dict[str, Service] = {}
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in trees}
    try:
        for i, (name, tree) in enumerate(trees.items()):
            services[name] = Service(
                name, tree, args.work.resolve(), args.corpus.resolve(), 18700 + i
            )
        print(
            f"app {args.app}, nice {args.nice}, load average {os.getloadavg()[0]:.1f}", flush=True
        )
        names = list(trees)
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                drop_caches()
                duration, cpu = services[name].job(args.app)
                results[name].append((duration, cpu))
                print(f"rep {rep} {name:>8}: job {duration:5.2f} s  worker cpu {cpu:5.2f} s  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    finally:
        for service in services.values():
            service.stop()
    print("medians (min-max):")
    for name, rows in results.items():
        ds, cs = [d for d, _ in rows], [c for _, c in rows]
        print(f"  {name:>8}: job {statistics.median(ds):5.2f} ({min(ds):.2f}-{max(ds):.2f}) s  "
              f"cpu {statistics.median(cs):5.2f} ({min(cs):.2f}-{max(cs):.2f}) s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
