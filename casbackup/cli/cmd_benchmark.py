from __future__ import annotations

import click

from casbackup.benchmark import run_benchmarks
from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json


@click.command()
@click.option(
    "--size",
    "size_mib",
    type=click.IntRange(4, 4096),
    default=256,
    show_default=True,
    help="MiB of data per measurement.",
)
@click.option(
    "--threads", default="1,2", show_default=True, help="Comma-separated thread counts to try."
)
@click.pass_context
def benchmark(ctx: click.Context, size_mib: int, threads: str) -> None:
    """Measure chunking, hashing, compression and encryption speed on this machine."""
    opts = global_options(ctx)
    try:
        counts = tuple(sorted({int(t) for t in threads.split(",") if t.strip()}))
    except ValueError:
        raise click.BadParameter("use numbers such as 1,2,4", param_hint="--threads") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("use numbers such as 1,2,4", param_hint="--threads")
    progress = None if opts.quiet or opts.json else (lambda line: click.echo(line, err=True))
    results = run_benchmarks(size_mib=size_mib, threads=counts, progress=progress)
    if opts.json:
        emit_json([r.__dict__ for r in results])
        return
    click.echo(f"{'benchmark':<28} {'threads':>7} {'MB/s':>10}  detail")
    for r in results:
        click.echo(f"{r.name:<28} {r.threads:>7} {r.mb_per_s:>10.0f}  {r.detail}")


COMMANDS = [benchmark]
