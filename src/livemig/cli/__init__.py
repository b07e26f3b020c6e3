"""The ``livemig`` command (virsh-like). Errors print one line and exit non-zero:
2 for bad input, 1 for failures."""

from __future__ import annotations

import sys

import click

from livemig.cli.main import cli
from livemig.errors import LivemigError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="livemig", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("livemig: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"livemig: error: {exc.format_message()}", err=True)
        return 2
    except LivemigError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        click.echo(f"livemig: error: {msg}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("livemig: interrupted", err=True)
        return 130
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())
