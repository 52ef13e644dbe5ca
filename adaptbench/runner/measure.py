"""Throughput and memory of a run, measured the same way for every adapter."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch


class ThroughputMeter(L.Callback):
    """Training images per second, measured over windows of whole epochs.

    A window opens at an epoch's first timed step and closes at the epoch's end; the device is
    synchronised only there (twice per epoch), so steps keep overlapping host and device work
    as they do unmeasured. The very first step (allocations, lazy init, compilation) is left
    out. The figure covers what a step costs in the runner, batch gathering on the device
    included; decoding is not in it (it happens once, before training).
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._window_start: float | None = None
        self._window_images = 0
        self._first_step_done = False
        self.first_step_at: float | None = None  # time.time() of the first training step (set-up's end)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if self._window_start is None and self._first_step_done:
            _synchronize(pl_module.device)
            self._window_start = time.perf_counter()
            self._window_images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._window_start is not None:
            self._window_images += len(batch[-1])  # the targets: a length, no device read
        self._first_step_done = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._window_start is not None:
            _synchronize(pl_module.device)
            self.seconds += time.perf_counter() - self._window_start
            self.images += self._window_images
            self._window_start = None

    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory() -> None:
    """Start a new peak: the matrix runner runs several cells in one worker process."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's since it started


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA's peak allocation on GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    hwm = _linux_peak_rss()
    if hwm is not None:
        return hwm, "cpu_max_rss"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "cpu_max_rss"


def _linux_peak_rss() -> int | None:
    """VmHWM from /proc (the peak since the last reset_peak_memory), in bytes."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
