"""`unityctl infra`: monitored servers, disks, pools, arrays, databases."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="Monitored servers: health, disks, pools, arrays, databases.", no_args_is_help=True)
servers_app = typer.Typer(help="Servers to monitor: add, list, show, edit, remove.", no_args_is_help=True)
disks_app = typer.Typer(help="Disks (SMART) of the monitored servers.", invoke_without_command=True)
pools_app = typer.Typer(help="ZFS pools and md RAID arrays.", invoke_without_command=True)
databases_app = typer.Typer(help="Database servers found on the monitored servers.", invoke_without_command=True)
app.add_typer(servers_app, name="servers")
app.add_typer(disks_app, name="disks")
app.add_typer(pools_app, name="pools")
app.add_typer(databases_app, name="databases")


@app.callback()
def _group() -> None:
    """Monitored servers: health, disks, pools, arrays, databases."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _docs(items: Any) -> list[dict[str, Any]]:
    """Service results as plain dicts (they may be dicts, dataclasses or models)."""
    import dataclasses

    docs = []
    for item in items or []:
        if isinstance(item, dict):
            docs.append(item)
        elif hasattr(item, "to_dict"):
            docs.append(item.to_dict())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            docs.append(dataclasses.asdict(item))
        elif hasattr(item, "model_dump"):
            docs.append(item.model_dump())
        else:
            docs.append({"value": str(item)})
    return docs


def _generic_table(out: Any, docs: list[dict[str, Any]], *, empty: str) -> None:
    """A table of whatever scalar fields the documents have (lists joined, dicts summarised)."""
    if not docs:
        out.note(empty)
        return
    columns = [k for k, v in docs[0].items() if k != "id"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return "; ".join(str(v) for v in value)
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    out.table([c.replace("_", " ") for c in columns], [[cell(d.get(c)) for c in columns] for d in docs])


# --- servers -------------------------------------------------------------------------------------


@servers_app.command("add")
def servers_add(
    ctx: typer.Context,
    name: str,
    credential: Annotated[str | None, typer.Option("--credential", "-c",
                                                   help="The creds server login to collect through.")] = None,
    local: Annotated[bool, typer.Option("--local", help="This machine, collected without SSH.")] = False,
    interval: Annotated[str | None, typer.Option(help="Collection interval, e.g. 5m (default infra.interval).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag (repeatable).")] = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Succeed quietly when NAME already exists.")]
    = False,
    json_: JsonOpt = False,
) -> None:
    """Monitor a server: through a creds login (--credential), or this machine (--local)."""
    from unityctl.infra import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        existing = servers.find_server(session, name) if if_missing else None
        if existing is not None:
            doc = servers.server_to_dict(existing)
            out.emit(doc, lambda c: out.note(f"server {name} already monitored"))
            return
        server = servers.add_server(session, keyring, name=name, credential=credential, local=local,
                                    interval=interval, tags=tag or [], default_interval=a.settings.infra.interval)
        doc = servers.server_to_dict(server, credential=credential)
    out.emit(doc, lambda c: out.success(
        f"server {name} added ({'local' if local else 'via ' + str(credential)}, every "
        f"{doc['interval_seconds']}s); collect it now with `unityctl infra collect {name}`"))


@servers_app.command("list")
def servers_list(
    ctx: typer.Context,
    tag: Annotated[str | None, typer.Option(help="Only servers with this tag.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List monitored servers."""
    from unityctl.core.durations import format_seconds
    from unityctl.core.output import ago
    from unityctl.infra import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        rows = servers.list_servers(session, tag=tag)
        names = servers.credential_names(session, {s.credential_id for s in rows if s.credential_id})
        docs = [servers.server_to_dict(s, credential=names.get(s.credential_id or 0)) for s in rows]
    out.emit(docs, lambda c: out.table(
        ["name", "login", "interval", "tags", "state", "last seen"],
        [(d["name"], "local" if d["local"] else d["credential"], format_seconds(d["interval_seconds"]),
          ", ".join(d["tags"]), d["state"], ago(d["last_seen_at"])) for d in docs],
        empty="no servers: add one with `unityctl infra servers add NAME --credential LOGIN` or `--local`"))


def _show_doc(session: Any, name: str) -> dict[str, Any]:
    from unityctl.core import alerts
    from unityctl.core.readdb import ReadConnection
    from unityctl.infra import servers, status

    server = servers.get_server(session, name)
    cred = servers.credential_names(session, {server.credential_id} if server.credential_id else set())
    doc = servers.server_to_dict(server, credential=cred.get(server.credential_id or 0))
    row = next((r for r in status.fleet_status(ReadConnection.of_session(session)) if r["id"] == server.id), {})
    doc["disks"], doc["pools"], doc["databases"] = row.get("disks"), row.get("pools"), row.get("databases")
    doc["open_alerts"] = [alerts.to_dict(x) for x in alerts.list_alerts(
        session, state="open", source=f"monitored_server/{server.id}")]
    return doc


def _render_show(out: Any, doc: dict[str, Any]) -> None:
    from unityctl.core.durations import format_seconds
    from unityctl.core.output import ago

    load = doc["load"]
    lines = [
        ("name", doc["name"]), ("login", "local" if doc["local"] else doc["credential"]),
        ("state", doc["state"] + (f" ({doc['consecutive_failures']} failures in a row)"
                                  if doc["consecutive_failures"] else "")),
        ("last seen", ago(doc["last_seen_at"])), ("next collection", ago(doc["next_collect_at"])),
        ("interval", format_seconds(doc["interval_seconds"])), ("tags", ", ".join(doc["tags"]) or "-"),
        ("os", doc["os"] or "-"), ("kernel", doc["kernel"] or "-"), ("cpus", doc["cpu_count"] or "-"),
        ("uptime", format_seconds(doc["uptime_seconds"]) if doc["uptime_seconds"] else "-"),
        ("load", " ".join(_num(x) for x in load)),
        ("memory", f"{_pct(doc['mem_used_percent'])} of "
                   f"{(doc['mem_total_kb'] or 0) / 1048576:.1f} GiB" if doc["mem_total_kb"] else "-"),
        ("disks", ", ".join(f"{v} {k}" for k, v in (doc["disks"] or {}).items())),
        ("pools/arrays", f"{(doc['pools'] or {}).get('total', 0)} ({(doc['pools'] or {}).get('not_ok', 0)} not ok)"),
        ("databases", f"{(doc['databases'] or {}).get('total', 0)} "
                      f"({(doc['databases'] or {}).get('unreachable', 0)} unreachable)"),
    ]
    if doc["last_error"]:
        lines.append(("last error", doc["last_error"]))
    out.table(["", doc["name"]], lines)
    out.table(["mount", "source", "type", "size GiB", "used", "free GiB"],
              [(f["mount"], f["source"], f["type"] or "-", f"{f['size_kb'] / 1048576:.1f}", _pct(f["use_percent"]),
                f"{f['avail_kb'] / 1048576:.1f}") for f in doc["filesystems"]], empty="no filesystems collected yet")
    for note in doc["notes"]:
        out.note(f"note: {note}")
    for alert in doc["open_alerts"]:
        out.note(f"alert #{alert['id']} {alert['severity']}: {alert['message']}")


@servers_app.command("show")
def servers_show(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Show one server: login, state, latest snapshot, filesystems, notes, open alerts."""
    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = _show_doc(session, name)
    out.emit(doc, lambda c: _render_show(out, doc))


@app.command("show")
def show(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Show one server: state, latest snapshot, filesystems, notes, open alerts."""
    servers_show(ctx, name, json_)


@servers_app.command("edit")
def servers_edit(
    ctx: typer.Context,
    name: str,
    new_name: Annotated[str | None, typer.Option("--name", help="Rename the server.")] = None,
    credential: Annotated[str | None, typer.Option("--credential", "-c", help="Use another creds login.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Make it this machine (no SSH).")] = False,
    interval: Annotated[str | None, typer.Option(help="New collection interval, e.g. 10m.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Add a tag (repeatable).")] = None,
    untag: Annotated[list[str] | None, typer.Option("--untag", help="Remove a tag (repeatable).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a server's name, login, interval or tags."""
    from unityctl.infra import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        server = servers.edit_server(session, keyring, name=name, new_name=new_name, credential=credential,
                                     local=local or None, interval=interval, add_tags=tag, remove_tags=untag)
        doc = servers.server_to_dict(server)
    out.emit(doc, lambda c: out.success(f"server {doc['name']} updated"))


@servers_app.command("remove")
def servers_remove(ctx: typer.Context, name: str) -> None:
    """Stop monitoring a server (its history, pools and databases go; disks keep their history)."""
    from unityctl.infra import servers

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        servers.remove_server(session, keyring, name=name)
    a.output().success(f"server {name} removed")


# --- collect -------------------------------------------------------------------------------------


@app.command()
def collect(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Servers to collect.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Collect every server.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Collect servers now (one SSH round trip each, in parallel); exit 3 when some failed."""
    from contextlib import ExitStack

    from unityctl.core.errors import PartialFailure
    from unityctl.infra.collector import collect as run_collect

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with ExitStack() as stack:
        hooks: dict[str, Any] = {}
        if out.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = stack.enter_context(Progress(TextColumn("collecting"), BarColumn(), MofNCompleteColumn(),
                                                    TimeElapsedColumn(), TextColumn("{task.description}"),
                                                    console=out.err, transient=True))
            task = progress.add_task("", total=None)
            hooks["on_start"] = lambda n: progress.update(task, total=n)
            hooks["on_result"] = lambda g: progress.update(task, advance=1, description=g.name)
        results = run_collect(sessions=a.session, keyring=keyring, settings=a.settings, names=names or [],
                              all_=all_, **hooks)
    docs = [r.to_dict() for r in results]

    def render(console: Any) -> None:
        def detail(d: dict[str, Any]) -> str:
            if not d["ok"]:
                return d["error"] or "failed"
            bits = []
            if d["alerts_raised"]:
                bits.append(f"{len(d['alerts_raised'])} alert(s) raised")
            if d["alerts_cleared"]:
                bits.append(f"{len(d['alerts_cleared'])} cleared")
            if d["notes"]:
                bits.append(f"{len(d['notes'])} note(s): {d['notes'][0]}" + (" ..." if len(d["notes"]) > 1 else ""))
            return "; ".join(bits) or "ok"

        out.table(["server", "result", "state", "seconds", "detail"],
                  [(d["server"], "ok" if d["ok"] else "FAILED", d["state"], f"{d['duration_s']:.2f}", detail(d))
                   for d in docs], empty="no servers to collect")

    out.emit(docs, render)
    failed = [d["server"] for d in docs if not d["ok"]]
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(docs)} servers failed: {', '.join(failed)}")


# --- status / history / prune --------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """One row per server: state, load, memory, fullest filesystem, disks, pools, databases, alerts."""
    from unityctl.core.output import ago
    from unityctl.infra.status import fleet_status

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.connection() as conn:
        rows = fleet_status(conn)

    def render(console: Any) -> None:
        def disks(d: dict[str, int]) -> str:
            return f"{d.get('ok', 0)}/{d.get('warn', 0)}/{d.get('failed', 0)}"

        def ratio(total: int, bad: int) -> str:
            return "-" if not total else f"{total}" + (f" ({bad} bad)" if bad else "")

        out.table(["server", "state", "load", "mem", "fs", "disks ok/w/f", "pools", "dbs", "seen", "alerts"],
                  [(r["name"], r["state"], _num(r["load1"]), _pct(r["mem_percent"]),
                    f"{_pct(r['fs_max_percent'])} {r['fs_max_mount'] or ''}".strip(), disks(r["disks"]),
                    ratio(r["pools"]["total"], r["pools"]["not_ok"]),
                    ratio(r["databases"]["total"], r["databases"]["unreachable"]),
                    ago(r["last_seen_at"]).replace(" ago", ""), str(r["open_alerts"] or "-")) for r in rows],
                  empty="no servers: add one with `unityctl infra servers add`")

    out.emit(rows, render)


@app.command()
def history(
    ctx: typer.Context,
    name: str,
    metric: Annotated[str, typer.Option(help="load, mem or disk.")] = "load",
    since: Annotated[str, typer.Option(help="How far back, e.g. 24h, 7d.")] = "24h",
    json_: JsonOpt = False,
) -> None:
    """A server's load, memory or disk history (a sparkline; the points with --json)."""
    from unityctl.core.durations import parse_timedelta
    from unityctl.infra import history as hist

    a = app_ctx(ctx)
    out = a.output(json_)
    window = parse_timedelta(since)
    with a.session() as session:
        doc = hist.history(session, server=name, metric=metric, since=window)

    def render(console: Any) -> None:
        if not doc["count"]:
            out.note(f"no {metric} samples for {name} in the last {since}")
            return
        unit = doc["unit"]
        console.print(f"{name} {metric} over {since} ({doc['count']} samples)", markup=False)
        console.print(hist.sparkline([p["value"] for p in doc["points"]]), markup=False)
        console.print(f"min {doc['min']:.2f}{unit}  avg {doc['avg']:.2f}{unit}  max {doc['max']:.2f}{unit}  "
                      f"last {doc['last']:.2f}{unit}", markup=False)

    out.emit(doc, render)


@app.command()
def prune(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Apply history retention now: downsample old raw samples to hourly averages, drop the oldest."""
    from unityctl.core.db import utcnow
    from unityctl.infra.tasks import prune as prune_task

    a = app_ctx(ctx)
    out = a.output(json_)
    report = prune_task(utcnow(), sessions=a.session, settings=a.settings)
    doc = report.to_dict()
    out.emit(doc, lambda c: out.success(
        f"{doc['hourly_written']} hourly averages written, {doc['raw_deleted']} raw and "
        f"{doc['hourly_deleted']} hourly samples deleted"))


# --- disks, pools, databases (analysis services live in infra.storage / infra.databases) --------


@disks_app.callback()
def disks(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", "-s", help="Only this server's disks.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List disks with their SMART verdict and the reason in words."""
    if ctx.invoked_subcommand is not None:
        return
    from unityctl.infra import storage

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = _docs(storage.list_disks(session, server=server))
    out.emit(docs, lambda c: out.table(
        ["server", "device", "serial", "model", "verdict", "temp", "reasons"],
        [(d.get("server"), d.get("device"), d.get("serial"), d.get("model"),
          "standby" if d.get("standby") else d.get("verdict"),
          "-" if d.get("temperature_c") is None else f"{d['temperature_c']}C", "; ".join(d.get("reasons") or []))
         for d in docs], empty="no disks known (collect first; a server whose smartctl sees no disk, e.g. a VM, has none)"))


@disks_app.command("accept")
def disks_accept(ctx: typer.Context, serial: str, json_: JsonOpt = False) -> None:
    """Accept a disk's current (stable, non-zero) counters as its baseline: only increases alert."""
    from unityctl.infra import storage

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        row = storage.accept_baseline(session, keyring, serial=serial)
        doc = storage.disk_to_dict(row, None)
    out.emit(doc, lambda c: out.success(f"baseline of disk {doc['serial']} accepted: verdict {doc['verdict']}"))


@pools_app.callback()
def pools(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List ZFS pools and md arrays with their state and reasons."""
    if ctx.invoked_subcommand is not None:
        return
    from unityctl.infra import storage

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = _docs(storage.list_pools(session))
    out.emit(docs, lambda c: out.table(
        ["server", "kind", "name", "level", "state", "health", "used", "reasons"],
        [(d.get("server"), d.get("kind"), d.get("name"), d.get("level") or "-", d.get("state"), d.get("health"),
          _pct(d.get("capacity_percent")), "; ".join(d.get("reasons") or [])) for d in docs],
        empty="no pools or arrays known yet (collect first)"))


@pools_app.command("scrub")
def pools_scrub(ctx: typer.Context, server: str, pool: str, json_: JsonOpt = False) -> None:
    """Start a scrub of a ZFS pool on a server."""
    from unityctl.infra import storage

    from unityctl.creds.servers import ssh_executor

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session, ssh_executor(session, keyring) as executor:
        message = storage.start_scrub(session, keyring, executor, server_name=server, pool=pool,
                                      timeout=float(a.settings.infra.command_timeout))
    out.emit({"server": server, "pool": pool, "started": True, "message": message},
             lambda c: out.success(message))


@databases_app.callback()
def databases(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List database servers found on the monitored servers, and whether they answer."""
    if ctx.invoked_subcommand is not None:
        return
    from unityctl.infra import databases as dbs

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = _docs(dbs.list_databases(session))
    out.emit(docs, lambda c: out.table(
        ["name", "kind", "version", "reachable", "ms"],
        [(d.get("name"), d.get("kind"), d.get("version") or "-",
          # The probe's full answer is long: it is in --json and `infra databases test NAME`.
          {True: "yes", False: "NO: " + (d.get("detail") or "")[:60], None: "-"}.get(d.get("reachable"), "-"),
          "-" if d.get("latency_ms") is None else f"{d['latency_ms']:.0f}")
         for d in docs], empty="no databases found yet (collect first)"))


@databases_app.command("test")
def databases_test(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Check now that a database answers (no credentials are sent)."""
    from unityctl.core.errors import UnityctlError
    from unityctl.infra import databases as dbs

    from unityctl.creds.servers import ssh_executor

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session, ssh_executor(session, keyring) as executor:
        result = dbs.test_database(session, name=name, executor=executor, keyring=keyring, settings=a.settings,
                                   timeout=float(a.settings.infra.connect_timeout))
    doc = {"name": name, **_docs([result])[0]}
    out.emit(doc, lambda c: _generic_table(out, [doc], empty=""))
    if doc.get("reachable") is False:
        raise UnityctlError(f"database {name} did not answer: {doc.get('detail') or 'unreachable'}")
