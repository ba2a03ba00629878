"""``jit-sandbox``: set up the local payment sandbox."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click


def _files(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


@click.group()
def main() -> None:
    """Local simulators of the Alipay and WeChat Pay gateways for JitPay."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Write fresh sandbox keys into DIRECTORY.

    Idempotent: files that already exist are kept, so the app and the sandbox keep agreeing on keys.
    The directory is created private (mode 0700).
    """
    # Imported here so `jit-sandbox --help` works even if a simulator fails to import.
    from jitpay_sandbox.alipay import generate_alipay_keys
    from jitpay_sandbox.wechat import generate_wechat_key
    from jitpay_sandbox.wechat_v3 import generate_wechat_v3_keys

    if directory.exists():
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            click.echo(f"warning: {directory} is readable by others (mode {mode:o}); "
                       f"consider `chmod 700 {directory}`", err=True)
    else:
        directory.mkdir(parents=True)
        os.chmod(directory, 0o700)

    before = _files(directory)
    try:
        generate_alipay_keys(directory)
        generate_wechat_key(directory)
        generate_wechat_v3_keys(directory)
    except OSError as exc:
        raise click.ClickException(f"could not write sandbox keys into {directory}: {exc}") from exc
    after = _files(directory)

    for path in sorted(after - before):
        click.echo(f"created {path}")
    for path in sorted(after & before):
        click.echo(f"kept    {path}")
    if after == before:
        click.echo(f"{directory}: all keys already present, nothing changed")


if __name__ == "__main__":  # pragma: no cover
    main()
