"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import time


class OtherLoad:
    """CPU used by *other* processes while a benchmark runs (cores, averaged over the run).

    System-wide busy time from ``/proc/stat`` minus this process's (and its
    reaped children's) CPU time, divided by the wall time; Linux only (None
    elsewhere). A value well above 0 means the figures were taken on a busy
    machine.
    """

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as fh:
                v = [int(x) for x in fh.readline().split()[1:9]]
        except OSError:
            return None
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _own() -> float:
        import resource

        s, c = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def cores(self) -> float | None:
        """Average number of cores busy with other processes since construction."""
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / wall
