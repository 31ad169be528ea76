"""Fuzz every probe parser with mutated real inputs: a result or a note, never an exception.

Seeds are the shared corpus files (when present) and our own fixtures; mutations truncate,
flip bytes, delete or duplicate lines and splice in random text. For smartctl JSON a second
strategy keeps the document valid JSON but replaces values with arbitrary JSON, which reaches
the field-by-field code that byte mutations rarely get past json.loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.corpus import FIXTURES, corpus_files
from unityctl.infra.probes import mdstat as md
from unityctl.infra.probes import sections
from unityctl.infra.probes import smart as sm
from unityctl.infra.probes import system as sy
from unityctl.infra.probes import zfs as zf

pytestmark = pytest.mark.backend_independent

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OWN = FIXTURES / "probes"


def _texts(paths: list[Path]) -> list[str]:
    return [p.read_text(errors="replace") for p in paths]


SMART_SEEDS = _texts(corpus_files("smart", "*.json") + sorted((OWN / "smart").glob("*.json")))
MDSTAT_SEEDS = _texts([p for p in corpus_files("mdstat") if p.parent.name == "mdstat"]
                      + [OWN / "mdstat" / "mixed.txt"])
MDADM_SEEDS = _texts([OWN / "mdstat" / "mdadm_detail_degraded.txt"])
ZFS_STATUS_SEEDS = _texts([p for p in corpus_files("zfs") if "status" in p.name]
                          + [OWN / "zfs" / "zpool_status_faulted_log_and_resilver.txt"])
ZFS_LIST_SEEDS = _texts([p for p in corpus_files("zfs") if "zpool-list" in p.name]
                        + [OWN / "zfs" / "zpool_list_hp.txt"])
COLLECTION_SEEDS = _texts([OWN / "system" / "collection_nonroot.txt"])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str]) -> str:
    """A seed text after up to four random mutations."""
    text = draw(st.sampled_from(seeds))
    for op in draw(st.lists(st.sampled_from(["truncate", "flip", "delete", "duplicate", "insert"]),
                            max_size=4)):
        if op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif op == "flip" and text:
            data = bytearray(text.encode("utf-8", errors="replace"))
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
            text = data.decode("utf-8", errors="replace")
        elif op in ("delete", "duplicate"):
            lines = text.splitlines()
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                if op == "delete":
                    del lines[i]
                else:
                    lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == "insert":
            lines = text.splitlines()
            i = draw(st.integers(0, len(lines)))
            lines.insert(i, draw(st.text(max_size=80)))
            text = "\n".join(lines)
    return text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)


@st.composite
def json_mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A smartctl seed document with some values (at any depth) replaced by arbitrary JSON."""
    seeds = [s for s in SMART_SEEDS if s.lstrip().startswith("{")]
    doc = json.loads(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        node: Any = doc
        for _depth in range(draw(st.integers(0, 4))):
            if isinstance(node, dict) and node:
                child = node[draw(st.sampled_from(sorted(node)))]
                if isinstance(child, (dict, list)) and child:
                    node = child
            elif isinstance(node, list) and node:
                child = node[draw(st.integers(0, len(node) - 1))]
                if isinstance(child, (dict, list)) and child:
                    node = child
        if isinstance(node, dict) and node:
            node[draw(st.sampled_from(sorted(node)))] = draw(JSON_VALUES)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON_VALUES)
    return doc


@FUZZ
@given(mutated(SMART_SEEDS))
def test_smart_parser_and_verdict_survive_mutated_text(text: str) -> None:
    report = sm.parse_smart(text)
    verdict = sm.judge(report, baseline={5: 1, 197: 0})
    assert verdict.status in ("passed", "warn", "failed", "standby", "unknown")
    devices, notes = sm.parse_scan(text)
    assert isinstance(devices, list) and isinstance(notes, list)


@FUZZ
@given(json_mutated())
def test_smart_parser_and_verdict_survive_wrong_json_types(doc: dict[str, Any]) -> None:
    report = sm.parse_smart(json.dumps(doc))
    assert sm.judge(report).status in ("passed", "warn", "failed", "standby", "unknown")
    assert isinstance(sm.parse_scan(doc)[0], list)


@FUZZ
@given(mutated(MDSTAT_SEEDS))
def test_mdstat_parser_and_verdict_survive_mutations(text: str) -> None:
    report = md.parse_mdstat(text)
    for array in report.arrays:
        assert md.judge_array(array).status in ("ok", "degraded", "failed", "rebuilding", "inactive")


@FUZZ
@given(mutated(MDADM_SEEDS + MDSTAT_SEEDS[:3]))
def test_mdadm_detail_parser_survives_mutations(text: str) -> None:
    detail = md.parse_mdadm_detail(text)
    assert isinstance(detail.state_flags, list)


@FUZZ
@given(mutated(ZFS_STATUS_SEEDS))
def test_zpool_status_parser_and_verdict_survive_mutations(text: str) -> None:
    report = zf.parse_zpool_status(text)
    for pool in report.pools:
        assert zf.judge_pool(pool).status in ("ok", "warn", "critical")
        assert all(len(row) == 3 for row in zf.pool_devices(pool))


@FUZZ
@given(mutated(ZFS_LIST_SEEDS))
def test_zpool_list_parser_and_verdict_survive_mutations(text: str) -> None:
    for entry in zf.parse_zpool_list(text).pools:
        assert zf.judge_pool(None, entry).status in ("ok", "warn", "critical")


@FUZZ
@given(mutated(COLLECTION_SEEDS))
def test_collection_and_section_parsers_survive_mutations(text: str) -> None:
    split = sections.split_sections(text)
    assert isinstance(split.sections, dict)
    report = sy.parse_collection(text)
    assert isinstance(report.notes, list)


@FUZZ
@given(st.text(max_size=400) | mutated(COLLECTION_SEEDS))
def test_system_parsers_return_values_or_notes_for_any_text(text: str) -> None:
    for parse in (sy.parse_os_release, sy.parse_uname, sy.parse_uptime, sy.parse_cpu_count,
                  sy.parse_loadavg, sy.parse_meminfo, sy.parse_df, sy.parse_mounts):
        assert parse(text) is not None
    mem = sy.parse_meminfo(text)
    assert mem.total_kb or mem.notes
