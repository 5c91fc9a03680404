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


#: Above this many cores used by other processes a benchmark warns that its figures may be low.
OTHER_LOAD_WARN = 0.2


def other_load_warning(cores: float | None, what: str = "the run") -> str | None:
    """The warning to print when ``cores`` (from :class:`OtherLoad`) exceeds ``OTHER_LOAD_WARN``."""
    if cores is None or cores <= OTHER_LOAD_WARN:
        return None
    return (
        f"warning: other processes used {cores:.2f} of {os.cpu_count()} cores on average "
        f"during {what}; figures may be low"
    )


def cpu_model() -> str:
    """``lscpu``'s "Model name" (else ``/proc/cpuinfo``'s "model name", else ``platform``)."""
    import contextlib
    import platform
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device, modules: tuple[str, ...] = ()) -> dict:
    """CPU model, cores, RAM, Python / torch / numpy (and ``modules``') versions, GPU name.

    Parameters
    ----------
    device : torch.device
        The device measured; for CUDA the GPU's name and the CUDA version are added.
    modules : tuple of str
        Further modules whose ``__version__`` to record (e.g. ``("lightning",)``).
    """
    import importlib
    import platform
    from datetime import UTC, datetime

    import numpy as np
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(mem / 1024**3, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    for name in modules:
        info[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device) -> None:
    """Wait for queued device work (CUDA kernels are asynchronous)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision: str):
    """``torch.autocast`` with bfloat16 for ``precision == "bf16"``, else a null context."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_rates(fn, n_items: int, steps: int, repeats: int, warmup: int, device) -> list[float]:
    """Items/s of each of ``repeats`` runs of ``steps`` calls ``fn(i)``, after ``warmup`` calls.

    ``n_items`` is what one call processes (a batch); the device is synchronised before
    and after each timed run.
    """
    for i in range(warmup):
        fn(i)
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            fn(i)
        sync(device)
        rates.append(n_items * steps / (time.perf_counter() - t0))
    return rates


def rate_summary(rates: list[float], **extra) -> dict:
    """``{"per_s": median, "per_s_min", "per_s_max", "repeats": rates, **extra}``."""
    import statistics

    return {
        "per_s": statistics.median(rates),
        "per_s_min": min(rates),
        "per_s_max": max(rates),
        "repeats": list(rates),
        **extra,
    }
