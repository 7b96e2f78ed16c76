"""Running under systemd: readiness notification, journald log levels, start-up progress.

sd_notify is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract
namespace); it needs no library and no running systemd, so tests can listen on a socket
of their own.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time


def notify(*fields: str) -> bool:
    """Send 'READY=1', 'STATUS=...', 'STOPPING=1'... if started with $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
        return True
    except OSError as exc:
        logging.getLogger(__name__).warning("sd_notify to %s failed: %s", address, exc)
        return False


def under_systemd() -> bool:
    """Started by systemd as a service (its stderr goes to the journal)."""
    return bool(os.environ.get("NOTIFY_SOCKET") or os.environ.get("JOURNAL_STREAM"))


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald reads the syslog priority from the prefix."""

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class Progress:
    """Start-up progress ("indexing chunk 40/100"): STATUS= under systemd, an updating line
    on a terminal in the foreground, an occasional log line otherwise."""

    def __init__(self, foreground: bool):
        self._tty = foreground and sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, message: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.5:
            return
        self._last = now
        if notify(f"STATUS={message}"):
            return
        if self._tty:
            sys.stderr.write(f"\r\x1b[Kscopefs: {message}" + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            logging.getLogger("scopefs").info("%s", message)
