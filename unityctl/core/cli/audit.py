"""`unityctl audit`: list, verify, export and archive the tamper-evident audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="The tamper-evident audit log of every change.", no_args_is_help=True)

SinceOpt = Annotated[str | None, typer.Option("--since", help="Only rows newer than this (e.g. 24h, 7d).")]


def _since(value: str | None):  # type: ignore[no-untyped-def]
    if value is None:
        return None
    from unityctl.core.db import utcnow
    from unityctl.core.durations import parse_timedelta

    return utcnow() - parse_timedelta(value)


@app.command("list")
def list_(
    ctx: typer.Context,
    since: SinceOpt = None,
    action: Annotated[str | None, typer.Option(help="Action, or its prefix (e.g. creds.keys).")] = None,
    object_: Annotated[str | None, typer.Option("--object", help="TYPE or TYPE/ID.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest) rows.")] = 200,
    json_: JsonOpt = False,
) -> None:
    """List audit rows, oldest first."""
    from unityctl.core import audit

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        rows = audit.entries(session, since=_since(since), action=action, object_ref=object_, limit=limit)
    docs = [audit.to_dict(r) for r in rows]
    out.emit(docs, lambda c: out.table(
        ["seq", "time (UTC)", "actor", "action", "object", "outcome"],
        [(d["seq"], d["ts"][:19].replace("T", " "), d["actor"], d["action"], f"{d['object_type']}/{d['object_id']}",
          d["outcome"]) for d in docs], empty="no audit rows match"))


@app.command()
def verify(
    ctx: typer.Context,
    archive: Annotated[list[Path] | None, typer.Option(help="Also verify these archive files (oldest first); "
                                                         "default: the archives the database recorded.")] = None,
    table_only: Annotated[bool, typer.Option("--table-only", help="Verify only the rows in the database.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Verify the chain; exit 1 naming the first row that was edited, deleted or reordered."""
    from unityctl.core import audit
    from unityctl.core.errors import AuditError

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session() as session:
        files = [] if table_only else (archive or audit.archive_files(session))
        missing = [p for p in files if not p.exists()]
        if missing:
            # Skipping it would let anyone who deletes the oldest rows (and the file) pass verification.
            raise AuditError(f"audit archive {missing[0]} is missing: restore it, name its copy with --archive, "
                             "or verify only the rows in the database with --table-only")
        result = audit.verify(session, keyring, archives=files or None)
    doc = {"ok": result.ok, "rows": result.rows, "first_bad_seq": result.first_bad_seq, "reason": result.reason,
           "archives": [str(p) for p in files]}
    if out.json_mode:
        out.emit(doc)
    if not result.ok:
        raise AuditError(f"audit chain broken: {result.reason}")
    if not out.json_mode:
        out.success(f"audit chain intact: {result.rows} row(s) verified")


@app.command()
def export(
    ctx: typer.Context,
    since: SinceOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to this file (0600) instead of stdout.")] = None,
) -> None:
    """Export rows as JSON lines (with their MACs, so the export can be verified)."""
    from unityctl.core import audit
    from unityctl.core.paths import write_private_file

    a = app_ctx(ctx)
    with a.session() as session:
        lines = list(audit.export_lines(audit.entries(session, since=_since(since))))
    text = "".join(line + "\n" for line in lines)
    if out_file:
        write_private_file(out_file, text.encode())
        a.output().success(f"{len(lines)} row(s) written to {out_file}")
    else:
        typer.echo(text, nl=False)


@app.command("archive")
def archive_(
    ctx: typer.Context,
    older_than: Annotated[str | None, typer.Option(help="Archive rows older than this (default: "
                                                    "audit.archive_after_days).")] = None,
) -> None:
    """Move old rows to a JSONL archive file; the chain stays verifiable across the boundary."""
    from unityctl.core import audit
    from unityctl.core.db import utcnow
    from unityctl.core.durations import parse_timedelta

    a = app_ctx(ctx)
    settings = a.settings
    age = parse_timedelta(older_than) if older_than else parse_timedelta(f"{settings.audit.archive_after_days}d")
    folder = settings.audit.archive_dir or settings.resolved_data_dir / "audit-archive"
    keyring = a.keyring()
    with a.session(write=True) as session:
        anchor = audit.archive(session, keyring, before=utcnow() - age, archive_dir=folder)
    if anchor is None:
        a.output().note("nothing old enough to archive")
    else:
        a.output().success(f"archived rows {anchor.first_seq}-{anchor.last_seq} to {anchor.path}")
