"""The root command: global options, the command groups, and the one place errors become exit codes.

Exit codes: 0 ok, 1 error, 2 usage or configuration error, 3 partial failure of a batch,
4 "attention" (alerts open, certificates expiring...) when a command is asked to say so.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from unityctl.containers.cli import app as containers_app
from unityctl.core.cli import alerts as alerts_cli
from unityctl.core.cli import audit as audit_cli
from unityctl.core.cli import config as config_cli
from unityctl.core.cli import db as db_cli
from unityctl.core.cli import secrets as secrets_cli
from unityctl.core.cli import system
from unityctl.core.context import AppContext
from unityctl.creds.cli import app as creds_app
from unityctl.daemon.cli import app as daemon_app
from unityctl.infra.cli import app as infra_app

app = typer.Typer(
    name="unityctl",
    help="Run a whole homelab from one place: credentials, servers, disks, containers.",
    no_args_is_help=True,
    # Locals in tracebacks would print secrets: never.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", envvar="UNITYCTL_CONFIG", help="Config file.",
                                                show_envvar=True)] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="Database URL (overrides "
                                                     "UNITYCTL_DATABASE_URL and the file).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory (overrides "
                                                  "UNITYCTL_DATA_DIR and the file).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only data and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks for unexpected errors.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")] = False,
) -> None:
    """Run a whole homelab from one place: credentials, servers, disks, containers."""
    ctx.obj = AppContext(config_file=config, database_url=database_url, data_dir=data_dir, json_mode=json_,
                         quiet=quiet, verbose=verbose, debug=debug, no_color=no_color)
    if verbose or debug:
        import logging

        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")


app.command()(system.init)
app.command()(system.status)
app.command()(system.version)
app.add_typer(creds_app, name="creds")
app.add_typer(infra_app, name="infra")
app.add_typer(containers_app, name="containers")
app.add_typer(alerts_cli.app, name="alerts")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(db_cli.app, name="db")
app.add_typer(config_cli.app, name="config")
app.add_typer(secrets_cli.app, name="secrets")
app.add_typer(daemon_app, name="daemon")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"unityctl: {message}\n")
    sys.stderr.flush()
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the tests call this; ``main`` exits with it)."""
    import click

    from unityctl.core.errors import EXIT_ERROR, EXIT_USAGE, UnityctlError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, prog_name="unityctl", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UnityctlError as exc:
        return _fail(f"error: {exc.message}", exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return _fail("aborted", EXIT_ERROR)
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # `unityctl ... | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are reported
        if debug:
            import traceback

            traceback.print_exc()
        from unityctl.core.config import redact_url

        first = (str(exc).strip().splitlines() or [""])[0]
        return _fail(f"unexpected error: {type(exc).__name__}: {redact_url(first)[:300]}"
                     + ("" if debug else " (run with --debug for the traceback)"), EXIT_ERROR)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
