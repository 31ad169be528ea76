"""`unityctl daemon`: the timed jobs run the same services as the commands."""

from __future__ import annotations


def test_daemon_once_collects_a_due_local_server_and_exits_zero(icli) -> None:  # type: ignore[no-untyped-def]
    assert icli("infra", "servers", "add", "here", "--local").code == 0
    result = icli("daemon", "run", "--once")
    assert result.code == 0, result.stderr
    assert "collect: 1 item(s)" in result.stderr
    status = icli("infra", "status", "--json").json()
    rows = status if isinstance(status, list) else status.get("servers", [])
    assert any(r.get("name") == "here" and r.get("state") == "up" for r in rows), status


def test_daemon_refuses_an_unknown_job_with_a_usage_error(icli) -> None:  # type: ignore[no-untyped-def]
    result = icli("daemon", "run", "--once", "--only", "nope")
    assert result.code == 2
    assert "unknown job(s): nope" in result.stderr


def test_daemon_jobs_lists_every_job_as_json(icli) -> None:  # type: ignore[no-untyped-def]
    names = {j["name"] for j in icli("daemon", "jobs", "--json").json()}
    assert {"collect", "notify", "cert-expiry", "cert-renew", "unused-keys", "prune", "audit-archive"} <= names


def test_a_failing_job_is_reported_and_the_others_still_run(icli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from unityctl.daemon import jobs

    def boom(app, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    real = jobs.default_jobs

    def patched():  # type: ignore[no-untyped-def]
        found = real()
        found[2].run = boom  # cert-expiry
        return found

    monkeypatch.setattr(jobs, "default_jobs", patched)
    result = icli("daemon", "run", "--once")
    assert result.code == 3
    assert "cert-expiry: failed: RuntimeError: disk on fire" in result.stderr
    assert "prune:" in result.stderr  # the jobs after it still ran


def test_an_exclusive_job_is_skipped_while_another_replica_holds_its_lock(env) -> None:  # type: ignore[no-untyped-def]
    """Two replicas on one PostgreSQL: only one runs an exclusive job at a time."""
    from sqlalchemy import text

    from unityctl.core.context import AppContext
    from unityctl.core.db import is_postgres
    from unityctl.daemon.jobs import Job, _lock_id, run_job

    calls: list[str] = []
    job = Job("probe-job", 60, lambda app, now: calls.append("ran"))
    app = AppContext()
    app._settings, app._engine, app._keyring = env.settings, env.engine, env.keyring
    if not is_postgres(env.engine):
        # SQLite: one process runs the daemon; exclusive jobs simply run.
        assert run_job(app, job)[0] and calls == ["ran"]
        return
    with env.engine.connect() as other:
        assert other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_id("probe-job")}).scalar()
        ran, summary = run_job(app, job)
        assert (ran, calls) == (False, [])
        assert "another replica" in summary
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_id("probe-job")})
    ran, _ = run_job(app, job)
    assert ran and calls == ["ran"]
