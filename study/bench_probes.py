"""What every benchmark of ``python -m study.bench`` shares: the machine's own limits
(one large fp32 matmul, a STREAM copy), a best-of timer, a resident-memory sampler and
a thread-count switch. Imported by ``study.bench`` and its sub-benches, never the reverse."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

import psutil
import torch

from study.stages.latency import synchronize

T = TypeVar("T")
GIB = 2**30


def best_time(fn: Callable[[], T], repeats: int, device: torch.device) -> tuple[float, T, list[float]]:
    """Fastest of ``repeats`` runs (the least disturbed by other processes), its output,
    and all the times (their spread is reported)."""
    times, output = [], cast(T, None)  # every run replaces it (repeats >= 1)
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        output = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), output, times


def spread(times: list[float]) -> str:
    return f"best of {len(times)}, worst {max(times) / min(times) - 1:+.0%}"


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- the machine's limits -----------------------------------------------------------------


def stream_copy_gbs(megabytes: int, repeats: int, device: torch.device) -> float:
    """STREAM "copy" bandwidth: (bytes read + bytes written) per second of ``b.copy_(a)``
    over arrays far larger than the last-level cache."""
    a = torch.ones(megabytes * 2**20 // 4, device=device)
    b = torch.zeros_like(a)
    b.copy_(a)  # touch every page before timing
    seconds, _, _ = best_time(lambda: b.copy_(a), repeats, device)
    return 2 * a.numel() * 4 / seconds / 1e9


def matmul_gflops(size: int, repeats: int, device: torch.device) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    seconds, _, _ = best_time(lambda: a @ b, repeats, device)
    return 2 * size**3 / seconds / 1e9


class PeakRSS:
    """Resident set size sampled every few milliseconds on a thread while the block runs."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.process, self.interval_s = psutil.Process(), interval_s
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.before = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
