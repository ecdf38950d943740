"""Turning step records into the Markdown table (medians, min-max, ratios, targets)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
TOOLS = ("casbackup", "restic", "borg")

SCENARIOS: dict[str, str] = {
    "1": "1 init",
    "2": "2 first backup",
    "3": "3 unchanged re-backup",
    "4": "4 backup after 1% change",
    "5": "5 full restore",
    "6": "6 full data check",
    "7": "7 dedup: 100 B inserted in 200 MiB",
    "8": "8 many small files, first backup",
    "9a": "9 scale: empty index",
    "9b": "9 scale: 5M-chunk index",
    "floor-tar": "cold tar read",
    "floor-find": "cold stat walk (find)",
    "floor-scandir": "cold stat walk (Python scandir)",
}
METRICS: dict[str, list[str]] = {
    "1": ["wall", "pss", "rss"],
    "2": ["wall", "cpu", "pss", "rss", "repo"],
    "3": ["wall", "cpu", "pss", "rss"],
    "4": ["wall", "cpu", "pss", "rss", "growth"],
    "5": ["wall", "cpu", "pss", "rss"],
    "6": ["wall", "cpu", "pss", "rss"],
    "7": ["growth", "wall", "pss", "rss"],
    "8": ["wall", "cpu", "pss", "rss", "repo"],
}
METRIC_LABEL = {
    "wall": "wall s",
    "cpu": "CPU s (user+sys)",
    "pss": "peak memory MiB (PSS, all processes)",
    "rss": "peak RSS MiB (sum over processes)",
    "repo": "repository MiB",
    "growth": "repository growth MiB",
}
# The targets, as ratios casbackup/restic of medians from the same run.
TARGETS: dict[tuple[str, str], float] = {
    ("2", "wall"): 0.65,
    ("3", "wall"): 0.5,
    ("4", "wall"): 0.55,
    ("5", "wall"): 0.8,
    ("6", "wall"): 0.8,
    ("8", "wall"): 0.7,
    ("2", "repo"): 1.0,
    ("8", "repo"): 1.0,
    ("7", "growth"): 1.0,
    **{(s, "pss"): 1.0 for s in METRICS},
}


def metric_value(rec: dict, metric: str) -> float | None:
    get: dict[str, Callable[[dict], float | None]] = {
        "wall": lambda r: r.get("wall_s"),
        "cpu": lambda r: r.get("cpu_s"),
        "pss": lambda r: r["tree_pss_kib"] / 1024 if r.get("tree_pss_kib") else None,
        "rss": lambda r: r["tree_rss_kib"] / 1024 if r.get("tree_rss_kib") else None,
        "repo": lambda r: r["repo_bytes"] / MiB if r.get("repo_bytes") is not None else None,
        "growth": lambda r: r["growth_bytes"] / MiB if r.get("growth_bytes") is not None else None,
    }
    return get[metric](rec)


def _fmt(x: float, metric: str) -> str:
    if metric in ("rss", "pss"):
        return f"{x:.0f}"
    if metric == "growth" or abs(x) < 10:
        return f"{x:.2f}"
    return f"{x:.1f}"


class Cell:
    """All repetitions of one (scenario, tool, metric)."""

    def __init__(self, records: list[dict], metric: str) -> None:
        self.metric = metric
        self.values = [
            v for r in records if r["status"] == "ok" and (v := metric_value(r, metric)) is not None
        ]
        self.failed = sum(r["status"] == "failed" for r in records)
        self.skipped = sum(r["status"] == "skipped" for r in records)
        self.median = statistics.median(self.values) if self.values else None

    def text(self) -> str:
        if self.median is None:
            return "failed" if self.failed else ("skipped" if self.skipped else "—")
        s = _fmt(self.median, self.metric)
        if len(self.values) > 1:
            lo, hi = min(self.values), max(self.values)
            s += f" ({_fmt(lo, self.metric)}–{_fmt(hi, self.metric)})"
        if self.failed:
            s += f" [{self.failed} failed]"
        return s


def ratio(a: Cell, b: Cell) -> float | None:
    if a.median is None or b.median is None or b.median <= 0:
        return None
    return a.median / b.median


def _r(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _select(records: list[dict], scenario: str, tool: str) -> list[dict]:
    return [r for r in records if r["scenario"] == scenario and r["tool"] == tool]


def main_table(records: list[dict], tools: list[str]) -> str:
    cols = [t for t in TOOLS if t in tools]
    head = ["scenario", "metric", *cols]
    if "casbackup" in cols:
        head += [f"cb/{t}" for t in cols if t != "casbackup"] + ["target cb/restic", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc, metrics in METRICS.items():
        if not any(r["scenario"] == sc for r in records):
            continue
        for m in metrics:
            cells = {t: Cell(_select(records, sc, t), m) for t in cols}
            row = [SCENARIOS[sc], METRIC_LABEL[m], *(cells[t].text() for t in cols)]
            if "casbackup" in cols:
                for t in cols:
                    if t != "casbackup":
                        row.append(_r(ratio(cells["casbackup"], cells[t])))
                target = TARGETS.get((sc, m))
                row.append("—" if target is None else f"≤ {target:g}")
                r = ratio(cells["casbackup"], cells["restic"]) if "restic" in cells else None
                if target is None:
                    row.append("")
                elif r is None:
                    row.append("n/a")
                else:
                    row.append("met" if r <= target else "missed")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def floors_table(records: list[dict], tools: list[str]) -> str:
    rows = []
    tar = Cell(_select(records, "floor-tar", "floor"), "wall")
    for sc in ("floor-tar", "floor-find", "floor-scandir"):
        c = Cell(_select(records, sc, "floor"), "wall")
        if c.values or c.failed:
            rows.append(f"| {SCENARIOS[sc]} | {c.text()} s | |")
    for t in tools:
        first = Cell(_select(records, "2", t), "wall")
        x = ratio(first, tar)
        if x is not None:
            goal = " (target ≤ 1.2)" if t == "casbackup" else ""
            rows.append(f"| {t} first backup ÷ cold tar read | {x:.2f}{goal} | |")
    if not rows:
        return ""
    return "\n".join(["| floor | wall (median, min–max) | |", "|---|---|---|", *rows])


def scale_table(records: list[dict]) -> str:
    empty = _select(records, "9a", "casbackup")
    large = _select(records, "9b", "casbackup")
    if not empty and not large:
        return ""
    lines = [
        "| scale (casbackup) | empty index | 5M-chunk index | ratio | target | status |",
        "|---|---|---|---|---|---|",
    ]
    for m, target in (("wall", 1.2), ("pss", 1.1), ("rss", None)):
        a, b = Cell(empty, m), Cell(large, m)
        x = ratio(b, a)
        if target is None:
            lines.append(f"| {METRIC_LABEL[m]} | {a.text()} | {b.text()} | {_r(x)} | — |  |")
            continue
        status = "n/a" if x is None else ("met" if x <= target else "missed")
        lines.append(
            f"| {METRIC_LABEL[m]} | {a.text()} | {b.text()} | {_r(x)} | ≤ {target:g} | {status} |"
        )
    return "\n".join(lines)


def problems(records: list[dict]) -> list[str]:
    """One line per distinct failure or skip reason."""
    seen: dict[tuple[str, str, str], int] = {}
    for r in records:
        if r["status"] != "ok":
            key = (r["tool"], SCENARIOS.get(r["scenario"], r["scenario"]), r.get("error", ""))
            seen[key] = seen.get(key, 0) + 1
    return [
        f"- {tool}, {sc}: {r_status(err)}{'' if n == 1 else f' (×{n})'}"
        for (tool, sc, err), n in seen.items()
    ]


def r_status(err: str) -> str:
    return err.replace("\n", " ")[:400] or "no reason recorded"


def render(meta: dict, records: list[dict]) -> str:
    tools = meta["tools"]
    parts = [main_table(records, tools)]
    if t := scale_table(records):
        parts.append(t)
    if t := floors_table(records, tools):
        parts.append(t)
    notes = list(meta.get("notes", []))
    if meta.get("slow_disk"):
        notes.insert(0, f"slow disk (bench/slowdisk.py): {meta['slow_disk']}")
    parts.append(
        "Cells: median (min–max) over "
        f"{meta['reps']} repetition(s); ratios are of medians; targets from issue 3 are "
        "casbackup/restic." + "".join(f"\n- {n}" for n in notes)
    )
    if p := problems(records):
        parts.append("Failures and skips:\n" + "\n".join(p))
    return "\n\n".join(parts) + "\n"


def results_md(meta: dict, records: list[dict]) -> str:
    m = meta["machine"]
    versions = "\n".join(f"- {k}: {v}" for k, v in meta["versions"].items())
    corpus = meta.get("corpus", {})
    return (
        "# Benchmark results\n\n"
        f"Written by `python -m bench.run {' '.join(meta['argv'])}` on {meta['date']}.\n\n"
        "## Machine\n\n"
        f"- {m['nproc']} cores, {m['memory_bytes'] / (1 << 30):.1f} GiB memory, {m['cpu_model']}\n"
        f"- kernel {m['kernel']}, Python {m['python']}, work folder on {m['workdir_fs']}\n"
        f"- page cache: {'dropped before each timed step' if meta['cold'] else 'could not be dropped: warm runs'}\n\n"
        f"## Versions\n\n{versions}\n\n"
        "## Data\n\n"
        f"- corpus: {corpus.get('files', '?')} files, {corpus.get('symlinks', '?')} symlinks, "
        f"{corpus.get('bytes', 0) / MiB:.0f} MiB (seed {meta['seed']}"
        f"{', --quick' if meta['quick'] else ''})\n"
        f"- mutation: {meta.get('mutation', {})}\n"
        f"- small files: {meta.get('small_files', '?')}; dedup file: 200 MiB random\n\n"
        "## Results\n\n" + render(meta, records)
    )


ANALYSIS_HEADING = "## What the numbers say"


def write_results_md(path: Path, meta: dict, records: list[dict]) -> None:
    """Rewrite the measured part; keep the hand-written analysis that follows it."""
    analysis = ""
    if path.exists():
        old = path.read_text()
        if ANALYSIS_HEADING in old:
            analysis = "\n" + old[old.index(ANALYSIS_HEADING) :]
    path.write_text(results_md(meta, records) + analysis)


def main(argv: list[str] | None = None) -> int:
    """Re-render a saved run: ``python -m bench.report bench/results/X.json [--write-results]``."""
    ap = argparse.ArgumentParser(prog="python -m bench.report")
    ap.add_argument("json", type=Path)
    ap.add_argument("--write-results", action="store_true", help="rewrite bench/RESULTS.md")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text())
    print(render(data["meta"], data["records"]), end="")
    if args.write_results:
        write_results_md(
            Path(__file__).resolve().parent / "RESULTS.md", data["meta"], data["records"]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
