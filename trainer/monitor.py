"""What the host learns from the device while training, without ever waiting for it.

Each optimizer step's loss stays on the device.  Every `every` steps (a window) the window's losses
and this rank's pre-emption flag go into one all-reduce and a non-blocking copy to pinned host
memory, marked by an event; the host reads that copy at the *next* window boundary, by which time
the device has long finished it, so a training step never waits for the GPU and the CPU can prepare
the next batches while the current ones run.  `drain()` (end of an epoch, or a stop) reads
everything synchronously.  Every rank reaches the same windows at the same steps, so the collective
calls match and every rank sees the same (summed) pre-emption flag at the same step: a signal is
acted on at most two windows after it arrived.  On the CPU the same code runs, synchronously.

Throughput per window comes from device events where there are some (the time between two
window boundaries on the GPU's own clock) and from the host clock otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as read back from the device."""

    epoch: int
    step: int
    loss: float  # mean over ranks of the step's mean micro-batch loss
    lrs: dict[str, float]
    samples_per_s: float  # of the window the step belongs to


class _Clock:
    """Marks on the device's timeline (CUDA events) or the host's (CPU runs are synchronous anyway)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


class StepMonitor:
    def __init__(self, device: torch.device, samples_per_step: int):
        self.device = device
        self.samples_per_step = samples_per_step
        self._clock = _Clock(device)
        self._world = dist.get_world_size() if dist.is_initialized() else 1
        self._start = self._clock.mark()
        self._losses: list[torch.Tensor] = []
        self._steps: list[tuple[int, int, dict[str, float]]] = []
        self._inflight: list[tuple] = []

    def record(self, epoch: int, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """A finished optimizer step: its loss (a device scalar, not read here) and the lrs it used."""
        self._losses.append(loss)
        self._steps.append((epoch, step, lrs))

    def window(self, stop_flag: bool) -> tuple[list[StepRecord], bool]:
        """Collective. Send off the steps recorded since the last window with this rank's flag; return the
        records of the previous window and whether any rank had flagged a stop by then."""
        previous, self._inflight = self._inflight, []
        self._launch(stop_flag)
        return self._read(previous)

    def drain(self, stop_flag: bool) -> tuple[list[StepRecord], bool]:
        """Collective. Send off the remaining steps and read everything: all records, and the stop decision."""
        self._launch(stop_flag)
        inflight, self._inflight = self._inflight, []
        return self._read(inflight)

    def _launch(self, stop_flag: bool) -> None:
        values = torch.stack([*self._losses, torch.full((), float(stop_flag), device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(values)
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=self._clock.cuda)
        host.copy_(values, non_blocking=True)
        end = self._clock.mark()
        self._inflight.append((host, end, self._start, self._steps))
        self._start = end
        self._losses, self._steps = [], []

    def _read(self, windows: list[tuple]) -> tuple[list[StepRecord], bool]:
        records, stop = [], False
        for host, end, start, steps in windows:
            if self._clock.cuda:
                end.synchronize()  # long complete when called from window(): the copy was queued a window ago
            values = host.tolist()
            stop |= values[-1] > 0
            rate = self.samples_per_step * len(steps) / max(self._clock.seconds(start, end), 1e-9)
            records += [StepRecord(epoch, step, loss / self._world, lrs, rate)
                        for (epoch, step, lrs), loss in zip(steps, values[:-1])]
        return records, stop
