from __future__ import annotations

import os
from dataclasses import replace

import click

from casbackup.cli.config_support import apply_config_defaults, require_repository
from casbackup.cli.context import global_options, open_backend, read_password
from casbackup.cli.render import emit_json
from casbackup.crypto.keyfile import WEAK_KDF, KdfParams
from casbackup.errors import StorageError, UsageError
from casbackup.repo.config import RepoConfig
from casbackup.repo.repository import Repository


@click.command()
@click.option(
    "--pack-size",
    type=click.IntRange(1, 512),
    default=16,
    show_default=True,
    help="Target pack size in MiB.",
)
@click.option(
    "--compression",
    type=click.Choice(["zstd", "none"]),
    default="zstd",
    show_default=True,
    help="Compress chunks (zstd keeps a chunk raw when it does not compress).",
)
@click.option(
    "--compression-level",
    type=click.IntRange(1, 19),
    default=3,
    show_default=True,
    help="zstd level: higher is smaller and slower.",
)
@click.option(
    "--insecure-test-kdf",
    is_flag=True,
    hidden=True,
    help="Weak key derivation, for test suites only.",
)
@click.option(
    "--copy-chunker-params-from",
    "params_from",
    metavar="SRC",
    help="Share SRC's chunker parameters and key material, so 'copy' dedups across.",
)
@click.option(
    "--from-password-file",
    metavar="FILE",
    help="SRC's passphrase from FILE (or the passphrase itself in CASBACKUP_FROM_PASSWORD).",
)
@click.option(
    "--from-password-command", metavar="CMD", help="SRC's passphrase from a command's output."
)
@click.pass_context
def init(
    ctx: click.Context,
    pack_size: int,
    compression: str,
    compression_level: int,
    insecure_test_kdf: bool,
    params_from: str | None,
    from_password_file: str | None,
    from_password_command: str | None,
) -> None:
    """Create a new, encrypted repository."""
    opts = global_options(ctx)
    apply_config_defaults(opts)  # the config's [repository] names where and how, if -r/env do not
    require_repository(opts)
    backend = open_backend(opts.repo, opts.s3_settings)
    _check_local_folder(backend.location)
    Repository.check_can_init(backend)  # before asking for a passphrase twice
    password = read_password(opts, confirm=True)
    if not password:
        raise UsageError("an empty passphrase is not allowed")
    config = RepoConfig(
        pack_size=pack_size << 20, compression=compression, compression_level=compression_level
    )
    key = None
    if params_from:
        # Blob ids and cut points are keyed by the master secret (repo_format.md, "Copying
        # between repositories"): sharing them means sharing the secret.
        from casbackup.cli.cmd_copy import open_source

        src = open_source(params_from, from_password_file, from_password_command)
        try:
            key = src.key
            config = replace(
                config, chunker=src.config.chunker, dump_chunker=src.config.dump_chunker
            )
        finally:
            src.close()
    kdf = WEAK_KDF if insecure_test_kdf else KdfParams()
    repo = Repository.init(backend, password, kdf=kdf, config=config, key=key)
    repo.close()
    if opts.json:
        emit_json({"message_type": "initialized", "id": config.id, "repository": backend.location})
    else:
        click.echo(f"created repository {config.id[:10]} at {backend.location}")
        click.echo(
            "Keep the passphrase safe: without it the data cannot be read by anyone, including you."
        )


def _check_local_folder(location: str) -> None:
    """Name the path and the problem when a local repository folder cannot be made there
    (rather than ``writing keys/<hex>: Not a directory`` once a passphrase was typed)."""
    if not os.path.isabs(location):
        return  # not a local path
    probe = location
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.lexists(probe) or os.path.isdir(probe):
        return
    if probe == location:
        raise StorageError(f"{location} is a file, not a folder: give a new or empty folder")
    raise StorageError(f"{location} cannot be created: {probe} is a file, not a folder")


COMMANDS = [init]
