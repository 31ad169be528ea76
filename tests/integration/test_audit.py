"""The tamper-evident audit log: chain verification, listing, export, archival, and write-or-refuse."""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import CLI, Result
from unityctl.core import alerts, audit, config, secrets
from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import make_engine, session_scope, utcnow


@dataclass
class Log:
    cli: CLI
    settings: Settings
    engine: Engine

    def keyring(self) -> Keyring:
        with session_scope(self.engine) as session:
            return secrets.load_keyring(session, self.settings)

    def add(self, count: int, *, at: dt.datetime | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        """Append ``count`` rows (seq 2.. after init's row), optionally stamped at a past time."""
        keyring = self.keyring()
        if at is not None:
            assert monkeypatch is not None
            monkeypatch.setattr(audit, "utcnow", lambda: at)
        try:
            with session_scope(self.engine, write=True) as session:
                for _ in range(count):
                    seq = len(audit.entries(session)) + 1
                    audit.record(session, keyring, action=f"test.{'even' if seq % 2 == 0 else 'odd'}",
                                 object_type="thing", object_id=seq, details={"n": seq, "password": "pw-" + str(seq)})
        finally:
            if monkeypatch is not None:
                monkeypatch.setattr(audit, "utcnow", utcnow)

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)


@pytest.fixture
def log(icli: CLI) -> Iterator[Log]:
    settings = config.load()
    engine = make_engine(settings.database_url)
    yield Log(icli, settings, engine)
    engine.dispose()


def _verify_fails_naming(log: Log, seq: int, *words: str) -> str:
    result = log.cli("audit", "verify")
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unityctl: error: audit chain broken"), lines[0]
    assert f"seq {seq}" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    as_json = log.cli("audit", "verify", "--json")
    assert as_json.code == 1
    doc = as_json.json()
    assert doc["ok"] is False and doc["first_bad_seq"] == seq
    return lines[0]


def test_verify_passes_on_an_untouched_log(log: Log) -> None:
    log.add(5)
    result = log.cli("audit", "verify")
    assert result.code == 0, result
    assert "6 row(s)" in result.stderr
    doc = log.cli("audit", "verify", "--json").json()
    assert doc == {"ok": True, "rows": 6, "first_bad_seq": None, "reason": "", "archives": []}


def test_verify_passes_on_a_fresh_database_with_only_the_init_row(log: Log) -> None:
    assert log.cli("audit", "verify").code == 0


def test_audit_rows_never_hold_secret_values(log: Log) -> None:
    log.add(2)
    rows = log.cli("audit", "list", "--json").json()
    assert rows[1]["details"] == {"n": 2, "password": "***"}
    with log.engine.connect() as conn:
        details = " ".join(r[0] for r in conn.execute(text("SELECT details FROM audit_log")))
    assert "pw-2" not in details


@pytest.mark.parametrize(
    ("column", "value"),
    [("details", '{"n": 99}'), ("action", "test.forged"), ("actor", "mallory@evil"), ("outcome", "failed"),
     ("object_id", "999")],
)
def test_verify_fails_naming_an_edited_row(log: Log, column: str, value: str) -> None:
    log.add(5)
    log.sql(f"UPDATE audit_log SET {column} = :v WHERE seq = 3", v=value)
    _verify_fails_naming(log, 3, "edited")


def test_verify_fails_on_an_edited_timestamp(log: Log) -> None:
    log.add(3)
    log.sql("UPDATE audit_log SET ts = :ts WHERE seq = 2", ts=dt.datetime(2020, 1, 1))
    _verify_fails_naming(log, 2, "edited")


def test_verify_fails_naming_a_deleted_middle_row(log: Log) -> None:
    log.add(5)
    log.sql("DELETE FROM audit_log WHERE seq = 3")
    _verify_fails_naming(log, 4, "deleted")


def test_verify_fails_naming_a_reordered_pair(log: Log) -> None:
    log.add(5)
    # Swap seq 3 and 4 (through a free value: seq is unique).
    log.sql("UPDATE audit_log SET seq = -1 WHERE seq = 3")
    log.sql("UPDATE audit_log SET seq = 3 WHERE seq = 4")
    log.sql("UPDATE audit_log SET seq = 4 WHERE seq = -1")
    _verify_fails_naming(log, 3)


def test_verify_fails_when_a_row_is_renumbered_to_fill_a_gap(log: Log) -> None:
    log.add(4)
    log.sql("DELETE FROM audit_log WHERE seq = 3")
    log.sql("UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    _verify_fails_naming(log, 3)


@pytest.mark.parametrize("deleted", [1, 2])
def test_verify_fails_when_the_newest_rows_are_deleted(log: Log, deleted: int) -> None:
    log.add(5)
    log.sql("DELETE FROM audit_log WHERE seq > :keep", keep=6 - deleted)
    _verify_fails_naming(log, 6, "newest rows are missing")


def test_verify_fails_on_a_forged_row_appended_with_a_made_up_mac(log: Log) -> None:
    log.add(2)
    with log.engine.connect() as conn:
        last = conn.execute(text("SELECT seq, mac FROM audit_log ORDER BY seq DESC")).first()
    log.sql("INSERT INTO audit_log (seq, ts, actor, action, object_type, object_id, outcome, details, prev_mac, mac) "
            "VALUES (:seq, :ts, 'x@y', 'forged', 'thing', '1', 'ok', '{}', :prev, :mac)",
            seq=last[0] + 1, ts=dt.datetime(2030, 1, 1), prev=last[1], mac="ab" * 32)
    _verify_fails_naming(log, last[0] + 1, "edited")


# --- list and export ----------------------------------------------------------------------------------

def test_audit_list_filters_by_since_action_and_object(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    old = utcnow() - dt.timedelta(days=10)
    log.add(2, at=old, monkeypatch=monkeypatch)  # seq 2, 3 (ten days ago)
    log.add(3)  # seq 4, 5, 6 (now)
    every = log.cli("audit", "list", "--json").json()
    assert [r["seq"] for r in every] == [1, 2, 3, 4, 5, 6]

    recent = log.cli("audit", "list", "--since", "7d", "--json").json()
    assert [r["seq"] for r in recent] == [1, 4, 5, 6]  # init's row is recent too
    even = log.cli("audit", "list", "--action", "test.even", "--json").json()
    assert [r["seq"] for r in even] == [2, 4, 6]
    prefix = log.cli("audit", "list", "--action", "test", "--since", "7d", "--json").json()
    assert [r["seq"] for r in prefix] == [4, 5, 6]
    by_type = log.cli("audit", "list", "--object", "thing", "--json").json()
    assert [r["seq"] for r in by_type] == [2, 3, 4, 5, 6]
    one = log.cli("audit", "list", "--object", "thing/5", "--json").json()
    assert [(r["seq"], r["object_type"], r["object_id"]) for r in one] == [(5, "thing", "5")]
    limited = log.cli("audit", "list", "--limit", "2", "--json").json()
    assert [r["seq"] for r in limited] == [5, 6]
    assert log.cli("audit", "list", "--object", "nothing", "--json").json() == []
    assert log.cli("audit", "verify").code == 0  # past timestamps are part of the MAC, not a break

    text_out = log.cli("audit", "list", "--action", "test.odd")
    assert text_out.code == 0 and "test.odd" in text_out.stdout and "test.even" not in text_out.stdout


def test_audit_list_rejects_a_bad_since_in_one_line(log: Log) -> None:
    result = log.cli("audit", "list", "--since", "yesterday")
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0 and "not a duration" in result.stderr


def test_audit_export_writes_jsonl_with_macs(log: Log, tmp_path: Path) -> None:
    log.add(3)
    result = log.cli("audit", "export")
    assert result.code == 0, result
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert len(row["mac"]) == 64 and len(row["prev_mac"]) == 64
    assert rows[0]["prev_mac"] == audit.GENESIS_MAC
    assert all(b["prev_mac"] == a["mac"] for a, b in zip(rows, rows[1:]))
    # The export is itself a verifiable chain.
    out = tmp_path / "export.jsonl"
    assert log.cli("audit", "export", "--out", out).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert log.cli("audit", "verify", "--archive", out).code == 1  # the table continues past the export...
    with session_scope(log.engine) as session:
        key = audit.audit_key(session, log.keyring())
    assert audit._check_chain(audit.read_archive(out), key, prev_mac=audit.GENESIS_MAC, next_seq=1).ok


# --- archival ----------------------------------------------------------------------------------------

def test_archiving_old_rows_keeps_the_chain_verifiable_across_the_boundary(log: Log,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old = utcnow() - dt.timedelta(days=400)
    # Start the chain over so that its first rows are old (init wrote seq 1 just now).
    log.sql("DELETE FROM audit_log")
    log.sql("DELETE FROM meta WHERE key = 'audit.head'")
    log.add(4, at=old, monkeypatch=monkeypatch)  # seq 1-4, old
    log.add(2)  # seq 5-6, new
    assert log.cli("audit", "verify").code == 0

    result = log.cli("audit", "archive")  # default: older than audit.archive_after_days (365)
    assert result.code == 0, result
    files = sorted((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    assert [f.name for f in files] == ["audit-00000001-00000004.jsonl"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    table = log.cli("audit", "list", "--json").json()
    assert [r["seq"] for r in table] == [5, 6, 7]  # 7: the archive itself is audited
    assert table[-1]["action"] == "audit.archive"

    verified = log.cli("audit", "verify", "--json")
    assert verified.code == 0, verified
    assert verified.json()["rows"] == 7 and verified.json()["archives"] == [str(files[0])]
    assert log.cli("audit", "verify", "--table-only").code == 0
    assert "nothing old enough" in log.cli("audit", "archive").stderr

    # A second archive of everything, then more rows: still one verifiable chain.
    assert log.cli("audit", "archive", "--older-than", "0s").code == 0
    log.add(2)
    files = sorted((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    assert len(files) == 2
    verified = log.cli("audit", "verify", "--json")
    assert verified.code == 0, verified
    assert verified.json()["rows"] == 10


def test_a_tampered_archive_file_is_detected(log: Log) -> None:
    log.add(3)
    assert log.cli("audit", "archive", "--older-than", "0s").code == 0
    log.add(1)
    assert log.cli("audit", "verify").code == 0
    path = next((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["details"] = {"n": 3, "password": "***", "sneaky": True}
    lines[2] = json.dumps(row, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    result = log.cli("audit", "verify")
    assert result.code == 1
    assert path.name in result.stderr and "seq 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_archive_file_with_a_row_removed_is_detected(log: Log) -> None:
    log.add(3)
    assert log.cli("audit", "archive", "--older-than", "0s").code == 0
    path = next((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    result = log.cli("audit", "verify")
    assert result.code == 1 and "seq 3" in result.stderr


def test_archiving_refuses_a_broken_chain(log: Log) -> None:
    log.add(3)
    log.sql("UPDATE audit_log SET action = 'x' WHERE seq = 2")
    result = log.cli("audit", "archive", "--older-than", "0s")
    assert result.code == 1 and "refusing to archive a broken chain" in result.stderr
    assert not (log.settings.resolved_data_dir / "audit-archive").exists() or \
        not list((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))


# --- write or refuse -------------------------------------------------------------------------------

def _block_audit_writes(log: Log) -> None:
    if log.engine.dialect.name == "sqlite":
        log.sql("CREATE TRIGGER block_audit BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit log is read-only'); END")
    else:
        log.sql("CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit log is read-only'; END $$")
        log.sql("CREATE TRIGGER block_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION block_audit()")


def _unblock_audit_writes(log: Log) -> None:
    if log.engine.dialect.name == "sqlite":
        log.sql("DROP TRIGGER block_audit")
    else:
        log.sql("DROP TRIGGER block_audit ON audit_log")


def _refused(result: Result) -> None:
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot write the audit row" in lines[0] and "the change was not made" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_mutating_command_refuses_to_run_when_its_audit_row_cannot_be_written(log: Log) -> None:
    _block_audit_writes(log)
    _refused(log.cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/blocked-token"))
    _unblock_audit_writes(log)
    assert log.cli("alerts", "channels", "list", "--json").json() == []
    with log.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM secret WHERE owner_type = 'alert_channel'")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM alert_channel")).scalar_one() == 0
    assert log.cli("audit", "verify").code == 0


def test_acknowledging_an_alert_is_refused_without_its_audit_row(log: Log) -> None:
    with session_scope(log.engine, write=True) as session:
        alert = alerts.raise_alert(session, type="disk", severity="warning", source_type="server", source_id="a",
                                   dedup_key="disk:a", message="disk a is failing").alert
    _block_audit_writes(log)
    _refused(log.cli("alerts", "ack", str(alert.id)))
    _refused(log.cli("alerts", "resolve", str(alert.id)))
    _unblock_audit_writes(log)
    assert log.cli("alerts", "show", str(alert.id), "--json").json()["state"] == "open"


def test_a_key_rotation_is_refused_without_its_audit_row_and_keeps_the_old_key(log: Log) -> None:
    before = log.settings.master_key_file.read_bytes()
    _block_audit_writes(log)
    _refused(log.cli("secrets", "rotate-master-key"))
    _unblock_audit_writes(log)
    assert log.settings.master_key_file.read_bytes() == before
    assert not log.settings.master_key_file.with_name("master.key.new").exists()
    assert log.cli("audit", "verify").code == 0


def test_a_missing_audit_table_also_stops_the_change(log: Log) -> None:
    log.sql("ALTER TABLE audit_log RENAME TO audit_log_gone")
    _refused(log.cli("alerts", "channels", "add", "hook", "--webhook", "http://127.0.0.1:9/x"))
    log.sql("ALTER TABLE audit_log_gone RENAME TO audit_log")
    assert log.cli("alerts", "channels", "list", "--json").json() == []


def test_archiving_after_the_clock_went_backwards_keeps_the_chain_whole(log: Log,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    old = utcnow() - dt.timedelta(days=30)
    log.sql("DELETE FROM audit_log")
    log.sql("DELETE FROM meta WHERE key = 'audit.head'")
    log.add(2, at=old, monkeypatch=monkeypatch)  # seq 1-2: old
    log.add(1)  # seq 3: now
    log.add(2, at=old, monkeypatch=monkeypatch)  # seq 4-5: "old" again (the clock was set back)
    result = log.cli("audit", "archive", "--older-than", "7d")
    assert result.code == 0, result
    files = list((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    assert [f.name for f in files] == ["audit-00000001-00000002.jsonl"]
    assert [r["seq"] for r in log.cli("audit", "list", "--json").json()] == [3, 4, 5, 6]
    verified = log.cli("audit", "verify")
    assert verified.code == 0, verified
    assert log.cli("audit", "verify", "--table-only").code == 0


def test_a_missing_archive_file_fails_verification_unless_table_only_is_asked(log: Log, tmp_path: Path) -> None:
    log.add(3)
    assert log.cli("audit", "archive", "--older-than", "0s").code == 0
    path = next((log.settings.resolved_data_dir / "audit-archive").glob("*.jsonl"))
    moved = tmp_path / "offline-copy.jsonl"
    path.rename(moved)
    result = log.cli("audit", "verify")
    assert result.code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr and "--table-only" in result.stderr
    assert log.cli("audit", "verify", "--archive", moved).code == 0
    assert log.cli("audit", "verify", "--table-only").code == 0


def test_deleting_the_oldest_rows_behind_a_forged_archive_anchor_is_detected(log: Log) -> None:
    log.add(4)
    # Drop seq 1-2 and pretend they were archived to a file that never existed.
    with log.engine.connect() as conn:
        prev = conn.execute(text("SELECT prev_mac FROM audit_log WHERE seq = 3")).scalar_one()
    log.sql("DELETE FROM audit_log WHERE seq < 3")
    log.sql("INSERT INTO audit_archive (first_seq, last_seq, last_mac, path, sha256, rows, created_at) "
            "VALUES (1, 2, :mac, '/nonexistent/audit-00000001-00000002.jsonl', :sha, 2, :now)",
            mac=prev, sha="0" * 64, now=utcnow())
    result = log.cli("audit", "verify")
    assert result.code == 1 and "is missing" in result.stderr
