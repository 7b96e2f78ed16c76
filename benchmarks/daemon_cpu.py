"""A daemon's CPU time, for benchmarks that measure CPU rather than wall time (machines
shared with other work change the wall time, not the CPU a request costs)."""
from __future__ import annotations

import ctypes
import os
import time


def daemon_cpu_s(pid: int) -> float:
    """The CPU time of process `pid`, from its process CPU-time clock
    (clock_getcpuclockid(3)): all its threads, those that ended too, in ns rather than
    the 10 ms ticks of /proc/PID/stat (a request costs tens of µs)."""
    clock = ctypes.c_int()                   # (a clockid_t)
    failed = ctypes.CDLL(None).clock_getcpuclockid(pid, ctypes.byref(clock))
    if failed:
        raise OSError(failed, f"clock_getcpuclockid({pid}): {os.strerror(failed)}")
    return time.clock_gettime_ns(clock.value) / 1e9
