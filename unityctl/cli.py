"""The root command: global options, the command groups, and the one place errors become exit codes.

Exit codes: 0 ok, 1 error, 2 usage or configuration error, 3 partial failure of a batch,
4 "attention" (alerts open, certificates expiring...) when a command is asked to say so.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from unityctl.core.cli import system
from unityctl.core.context import AppContext

# Command groups, imported only when used: building every group's commands costs start-up time
# that `unityctl version` or a cron job running one command should not pay.
GROUPS: dict[str, str] = {
    # Each module's Typer app carries its own help text (shown once the group is loaded).
    "creds": "unityctl.creds.cli",
    "infra": "unityctl.infra.cli",
    "containers": "unityctl.containers.cli",
    "alerts": "unityctl.core.cli.alerts",
    "audit": "unityctl.core.cli.audit",
    "db": "unityctl.core.cli.db",
    "config": "unityctl.core.cli.config",
    "secrets": "unityctl.core.cli.secrets",
    "daemon": "unityctl.daemon.cli",
}


class LazyGroup(TyperGroup):
    """The root group: the commands defined here, plus GROUPS loaded on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *GROUPS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in GROUPS:
            module = importlib.import_module(GROUPS[cmd_name])
            command = typer.main.get_command(module.app)
            command.name = cmd_name
            return command
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=LazyGroup,
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

        # Only unityctl's own loggers get chatty: libraries' debug output (SQL with its parameters,
        # SSH transport chatter, certbot's ACME exchanges) stays at warnings.
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("unityctl").setLevel(logging.DEBUG if debug else logging.INFO)


app.command()(system.init)
app.command()(system.status)
app.command()(system.version)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"unityctl: {message}\n")
    sys.stderr.flush()
    return code


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...],
                                 tuple[type[BaseException], ...]]:
    """(exit, abort, usage) exception classes of click and of the click copy that typer vendors.

    Typer >= 0.28 parses the command line with its own copy of click (``typer._click``), whose
    exceptions are not click's: both must be mapped, or a usage error looks "unexpected".
    """
    exits: list[type[BaseException]] = [typer.Exit]
    aborts: list[type[BaseException]] = [typer.Abort]
    usage: list[type[BaseException]] = []
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # older typer: plain click
        import click  # noqa: F401 - imported here only when typer itself uses it
    else:
        usage.append(vendored.ClickException)
    # Plain click raises only if something imported it; importing it just to catch would cost start-up time.
    click = sys.modules.get("click")
    if click is not None:
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.ClickException)
    return tuple(exits), tuple(aborts), tuple(usage)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the tests call this; ``main`` exits with it)."""
    from unityctl.core.errors import EXIT_ERROR, EXIT_USAGE, UnityctlError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    exit_classes, abort_classes, click_classes = _click_exceptions()
    try:
        result = app(args=argv, prog_name="unityctl", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UnityctlError as exc:
        return _fail(f"error: {exc.message}", exc.exit_code)
    except exit_classes as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except abort_classes:
        return _fail("aborted", EXIT_ERROR)
    except click_classes as exc:
        code = getattr(exc, "exit_code", None) or EXIT_USAGE
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `unityctl` or `unityctl alerts` alone: the help is the answer (exit 2, like click).
            exc.show(file=sys.stderr)  # type: ignore[attr-defined]
            return code
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        return _fail(f"error: {message}{hint}", code)
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
