"""Tests for the section splitter of collect.sh output."""

from __future__ import annotations

import pytest

from unityctl.infra.probes.sections import format_header, section_texts, split_sections

pytestmark = pytest.mark.backend_independent


def _doc(*parts: str) -> str:
    return "\n".join(["@@unityctl:collect version=1 user=alice@@", *parts, "@@unityctl:end@@"]) + "\n"


def test_sections_come_back_by_name_with_exit_code_and_attributes() -> None:
    text = _doc(format_header("meminfo", 0, path="/proc/meminfo"), "MemTotal: 1 kB",
                format_header("zpool_list", 127, status="not-installed", tool="zpool"), "zpool: not installed")
    split = split_sections(text)
    assert list(split.sections) == ["meminfo", "zpool_list"]
    assert split.sections["meminfo"].text == "MemTotal: 1 kB"
    assert split.sections["meminfo"].rc == 0 and split.sections["meminfo"].ran
    zl = split.sections["zpool_list"]
    assert (zl.rc, zl.status, zl.attrs["tool"]) == (127, "not-installed", "zpool")
    assert not zl.ran
    assert split.meta == {"version": "1", "user": "alice"}
    assert split.complete and split.notes == []


def test_a_login_banner_before_the_first_header_is_kept_apart_as_preamble() -> None:
    split = split_sections("Welcome!\nLast login: today\n" + _doc(format_header("uname", 0), "Linux 6.1 x86_64"))
    assert split.preamble == "Welcome!\nLast login: today"
    assert split.texts() == {"uname": "Linux 6.1 x86_64"}


def test_a_malformed_header_is_noted_and_kept_as_body_text() -> None:
    split = split_sections(_doc(format_header("a", 0), "@@unityctl:section broken rc=x@@", "line"))
    assert split.sections["a"].text == "@@unityctl:section broken rc=x@@\nline"
    assert any("malformed section header" in n for n in split.notes)


def test_a_repeated_section_name_is_kept_with_a_suffix() -> None:
    split = split_sections(_doc(format_header("df", 0), "one", format_header("df", 1), "two"))
    assert split.sections["df"].text == "one"
    assert split.sections["df#2"].text == "two" and split.sections["df#2"].rc == 1
    assert any("more than once" in n for n in split.notes)


def test_output_cut_short_is_reported_as_incomplete() -> None:
    split = split_sections(format_header("uptime", 0) + "\n12.0 3.0\n")
    assert not split.complete
    assert split.sections["uptime"].text == "12.0 3.0"
    assert any("cut short" in n for n in split.notes)


def test_text_without_any_header_is_reported_not_raised() -> None:
    split = split_sections("bash: collect.sh: No such file or directory\n")
    assert split.sections == {}
    assert any("no section headers" in n for n in split.notes)


def test_escaped_marker_lines_in_a_body_are_restored_and_cannot_forge_a_section() -> None:
    forged = " " + format_header("meminfo", 0)
    split = split_sections(_doc(format_header("df", 0), forged))
    assert list(split.sections) == ["df"]
    assert split.sections["df"].text == format_header("meminfo", 0)


def test_crlf_line_endings_and_bytes_input_are_accepted() -> None:
    text = _doc(format_header("loadavg", 0), "0.1 0.2 0.3 1/2 3").replace("\n", "\r\n").encode()
    assert section_texts(text) == {"loadavg": "0.1 0.2 0.3 1/2 3"}
