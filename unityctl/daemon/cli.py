"""`unityctl daemon`: run the timed jobs (for systemd, a container, or cron with --once)."""

from __future__ import annotations

from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="Run the timed jobs (collection, notifications, housekeeping).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run the timed jobs (collection, notifications, housekeeping)."""


@app.command()
def jobs(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List the jobs and how often they run."""
    from unityctl.core.durations import format_seconds
    from unityctl.daemon.jobs import default_jobs

    out = app_ctx(ctx).output(json_)
    docs = [{"name": j.name, "every": format_seconds(j.interval_s), "one_replica": j.exclusive, "what": j.help}
            for j in default_jobs()]
    out.emit(docs, lambda c: out.table(["job", "every", "one replica", "what"],
                                       [(d["name"], d["every"], d["one_replica"], d["what"]) for d in docs]))


@app.command()
def run(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run every job once and exit (for cron).")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this job (repeatable).")] = None,
) -> None:
    """Run the jobs on their timers until SIGTERM/SIGINT (or once with --once)."""
    import signal

    from unityctl.core.errors import UsageError
    from unityctl.daemon.jobs import default_jobs, loop

    a = app_ctx(ctx)
    out = a.output()
    selected = default_jobs()
    if only:
        unknown = set(only) - {j.name for j in selected}
        if unknown:
            raise UsageError(f"unknown job(s): {', '.join(sorted(unknown))} (see `unityctl daemon jobs`)")
        selected = [j for j in selected if j.name in only]
    a.engine()
    a.keyring()  # fail now, clearly, rather than in every job
    stopping = {"flag": False}

    def stop(_signum: int, _frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failures: list[str] = []

    def report(name: str, ran: bool, summary: str) -> None:
        if summary.startswith("failed"):
            failures.append(name)
        out.note(f"{name}: {summary if ran else 'skipped: ' + summary}")

    loop(a, selected, once=once, report=report, should_stop=lambda: stopping["flag"])
    if once and failures:
        from unityctl.core.errors import PartialFailure

        raise PartialFailure(f"{len(failures)} job(s) failed: {', '.join(failures)}")
