"""Split the output of ``collect.sh`` into named sections.

The collection script prints one header line before each section body::

    @@unityctl:section NAME rc=N [key=value ...]@@

``NAME`` is a token without spaces (``meminfo``, ``smart:/dev/sda``, ``mdadm_detail:md0``),
``rc`` the exit code of the command that produced the body, and the optional ``key=value``
pairs say how it ran (``status=not-installed``, ``via=sudo``, ``bin=/usr/sbin/smartctl``).
Lines ``@@unityctl:collect ...@@`` and ``@@unityctl:end@@`` frame the whole run; the end marker
lets the reader tell a complete run from a truncated one (an SSH session cut mid-way).

The splitter is deliberately forgiving: the text may come over a flaky SSH channel, so garbage
before the first header, malformed headers, duplicated names and a missing end marker become
notes, never exceptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADER_PREFIX = "@@unityctl:section "
BEGIN_PREFIX = "@@unityctl:collect"
END_MARKER = "@@unityctl:end@@"

# One regex for the header: the name is any run of non-space characters, rc an optional sign
# and digits, then free key=value pairs. Anything else that starts with the prefix is reported.
_HEADER_RE = re.compile(r"^@@unityctl:section (?P<name>\S+) rc=(?P<rc>-?\d{1,6})(?P<attrs>(?: \S+=\S*)*)\s*@@\s*$")
_ATTR_RE = re.compile(r"(\S+?)=(\S*)")

# Statuses the script writes into ``status=``; anything else is kept verbatim.
STATUS_OK = "ok"
STATUS_NOT_INSTALLED = "not-installed"
STATUS_NEEDS_ROOT = "needs-root"
STATUS_ABSENT = "absent"


@dataclass(frozen=True)
class Section:
    """One section of collected output: its name, exit code, header attributes and body text."""

    name: str
    rc: int | None
    attrs: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def status(self) -> str:
        """The collection status the script recorded (``ok`` when it wrote none)."""
        return self.attrs.get("status", STATUS_OK)

    @property
    def ran(self) -> bool:
        """True when the command actually ran (the body is its output, whatever its exit code)."""
        return self.status == STATUS_OK


@dataclass
class SectionSplit:
    """The result of :func:`split_sections`.

    ``sections`` keeps header order; ``preamble`` is any text before the first header (normally
    empty: login banners and motd end up here); ``meta`` holds the ``key=value`` pairs of the
    ``@@unityctl:collect ...@@`` line; ``complete`` tells whether the end marker was seen.
    """

    sections: dict[str, Section] = field(default_factory=dict)
    preamble: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    def texts(self) -> dict[str, str]:
        """``{section_name: body_text}``."""
        return {name: sec.text for name, sec in self.sections.items()}


def format_header(name: str, rc: int, **attrs: str) -> str:
    """Build a header line exactly as ``collect.sh`` writes it (used by tests and fixtures)."""
    extra = "".join(f" {k}={v}" for k, v in attrs.items())
    return f"{HEADER_PREFIX}{name} rc={rc}{extra}@@"


def split_sections(text: str | bytes) -> SectionSplit:
    """Split collected text into sections.

    Takes the raw output of ``collect.sh`` (str, or bytes decoded as UTF-8 with replacement) and
    returns a :class:`SectionSplit`. Never raises: malformed header lines are kept as body text
    of the current section and reported in ``notes``; a second section with an already seen name
    is stored as ``NAME#2`` (and so on).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    result = SectionSplit()
    current_name: str | None = None
    current_rc: int | None = None
    current_attrs: dict[str, str] = {}
    body: list[str] = []
    preamble: list[str] = []

    def flush() -> None:
        if current_name is None:
            return
        name = current_name
        n = 2
        while name in result.sections:
            name = f"{current_name}#{n}"
            n += 1
        if name != current_name:
            result.notes.append(f"section {current_name} appears more than once; kept as {name}")
        result.sections[name] = Section(name, current_rc, dict(current_attrs), "\n".join(body))

    for line in text.splitlines():
        # \r from a terminal-allocating SSH session must not break header matching.
        stripped = line.rstrip("\r")
        if stripped.startswith(HEADER_PREFIX):
            m = _HEADER_RE.match(stripped)
            if m:
                flush()
                current_name = m.group("name")
                current_rc = int(m.group("rc"))
                current_attrs = dict(_ATTR_RE.findall(m.group("attrs") or ""))
                body = []
                continue
            result.notes.append(f"malformed section header ignored: {stripped[:80]!r}")
        elif stripped.startswith(BEGIN_PREFIX) and stripped.endswith("@@"):
            inner = stripped[len(BEGIN_PREFIX):-2]
            result.meta.update(dict(_ATTR_RE.findall(inner)))
            continue
        elif stripped == END_MARKER:
            flush()
            current_name = None
            body = []
            result.complete = True
            continue
        if stripped.startswith(" @@unityctl:"):
            # collect.sh escapes body lines that look like markers with one leading space.
            stripped = stripped[1:]
        if current_name is None:
            preamble.append(stripped)
        else:
            body.append(stripped)
    flush()
    result.preamble = "\n".join(preamble).strip("\n")
    if not result.sections:
        result.notes.append("no section headers found: not output of collect.sh")
    elif not result.complete:
        result.notes.append("collection output has no end marker: it was cut short")
    return result


def section_texts(text: str | bytes) -> dict[str, str]:
    """Shorthand for ``split_sections(text).texts()``: ``{section_name: body_text}``."""
    return split_sections(text).texts()
