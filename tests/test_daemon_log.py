"""The log check of the mount fixtures (daemon_log.py) on logs of known content."""
from __future__ import annotations

import pytest

from daemon_log import check, unexpected

LOG = """\
2026-12-06 17:33:16,276 INFO scopefs[9076]: loading /data/db
2026-12-06 17:33:16,617 INFO scopefs.daemon.serve[9076]: mounted /data/db on /mnt
2026-12-06 17:33:17,001 WARNING scopefs.daemon.fs[9076]: read(7, 0): [Errno 5] frame 5: cut chunk
2026-12-06 17:33:17,002 ERROR scopefs.daemon.fs[9076]: lookup(1, b'x') failed
Traceback (most recent call last):
  File "fs.py", line 80, in wrapper
ValueError: boom
2026-12-06 17:33:17,100 INFO scopefs.daemon.serve[9076]: unmounted /mnt
Exception in thread overview-size:
Traceback (most recent call last):
KeyError: 3
/usr/lib/python3/zarr/core.py:12: DeprecationWarning: old
[ WARN:0@0.382] global cap.cpp:212 open VIDEOIO(FFMPEG): cannot capture by name
"""


def firsts(records) -> list[str]:
    return [record[0].split(": ", 1)[-1][:20] for record in records]


def test_warnings_errors_tracebacks_and_stray_lines_are_found():
    found = unexpected(LOG)
    assert firsts(found) == ["read(7, 0): [Errno 5", "lookup(1, b'x') fail", "unmounted /mnt"]
    assert "ValueError: boom" in found[1]              # the traceback goes with its record
    assert "KeyError: 3" in found[2] and any("DeprecationWarning" in line for line in found[2])


def test_patterns_allow_records_by_any_of_their_lines():
    found = unexpected(LOG, [r"frame \d+: cut chunk", r"ValueError: boom"])
    assert firsts(found) == ["unmounted /mnt"]
    assert unexpected(LOG.splitlines()[0] + "\n") == []


def test_check_fails_the_test_and_needs_a_reason(request):
    with pytest.raises(pytest.fail.Exception, match="does not expect"):
        check(LOG, request.node)
    check(LOG.splitlines()[0], request.node)            # nothing serious: passes
    check("2026-12-06 17:33:17,001 ERROR scopefs[1]: cannot mount /x: no such file", request.node,
          refused_mounts=1)


@pytest.mark.daemon_log("ignored")
def test_a_marker_without_a_reason_is_refused(request):
    with pytest.raises(pytest.UsageError, match="needs a reason"):
        check("", request.node)
