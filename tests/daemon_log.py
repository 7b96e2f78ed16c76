"""The daemon's log as part of a test's verdict (S3QL's tests do the same).

A daemon answers a failure with an errno and one log line, so a test that only looks at
what the mount shows can pass while the daemon logs tracebacks. The mount fixtures hand
their log here at teardown: a WARNING, ERROR or CRITICAL record, a traceback, or a Python
warning the test did not expect fails it. A test that expects some says so, with a
reason, by a regular expression that matches the record (its first line, or any line of
a traceback):

    @pytest.mark.daemon_log(r"frame 7: .*truncated", reason="a cut chunk fails its frames")

on a test, class or module (`pytestmark`), or `mount.expect_log(pattern)` in the test. A
mount the test saw fail (MountFailed) may log its one-line "cannot mount" error.
"""
from __future__ import annotations

import re
from typing import Iterable

import pytest

#: the first line of a record: "2026-12-06 17:33:16,276 LEVEL logger[pid]: message"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")
SERIOUS = {"WARNING", "ERROR", "CRITICAL"}
#: lines that are a problem wherever they appear: a traceback, a Python warning, a crash
STRAY = re.compile(r"^Traceback \(most recent call last\)|^\S+:\d+: \w*Warning: |^Fatal Python error|"
                   r"^Exception in thread |^\[ ?(WARN|ERROR):")     # (the last: OpenCV's own log)
#: what a mount the test saw refused logs (the error it reported, nothing more)
REFUSED_MOUNT = r" ERROR scopefs\[\d+\]: cannot mount "


def records(text: str) -> list[list[str]]:
    """The log as records: a first line and the lines that follow it (a traceback)."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if RECORD.match(line) or not out:
            out.append([line])
        else:
            out[-1].append(line)
    return out


def unexpected(text: str, allowed: Iterable[str] = ()) -> list[list[str]]:
    """The records of `text` that are a problem and that no pattern of `allowed` matches."""
    patterns = [re.compile(p) for p in allowed]
    found = []
    for record in records(text):
        head = RECORD.match(record[0])
        serious = (head is not None and head["level"] in SERIOUS) or any(STRAY.match(line) for line in record)
        if serious and not any(p.search(line) for p in patterns for line in record):
            found.append(record)
    return found


def allowed_by(node: pytest.Item | pytest.Collector) -> list[str]:
    """The patterns `daemon_log` markers allow, from the test up to its module."""
    patterns = []
    for marker in node.iter_markers("daemon_log"):
        if not marker.kwargs.get("reason"):
            raise pytest.UsageError(f"{node.nodeid}: daemon_log({marker.args}) needs a reason=")
        patterns += marker.args
    return patterns


def check(log: str, node, expected: Iterable[str] = (), refused_mounts: int = 0) -> None:
    """Fail (at teardown) if `log` holds a record that is not expected."""
    allowed = [*allowed_by(node), *expected, *([REFUSED_MOUNT] if refused_mounts else [])]
    found = unexpected(log, allowed)
    if found:
        shown = "\n".join("\n".join(record if len(record) < 12 else record[:4] + ["  ..."] + record[-6:])
                          for record in found[:8])
        more = f"\n... and {len(found) - 8} more" if len(found) > 8 else ""
        pytest.fail(f"the daemon logged what this test does not expect (allow it with "
                    f"@pytest.mark.daemon_log(pattern, reason=...) if it should):\n{shown}{more}", pytrace=False)


def register_marker(config) -> None:
    config.addinivalue_line("markers", "daemon_log(*patterns, reason): log records (regular expressions) "
                                       "the daemon may write during this test")
