"""How a long stage runs: progress that suits both a terminal and a log file, and its CPU threads.

``dvc repro > log`` sends stderr to a file, where a redrawn progress bar becomes one carriage-return
line per update (a train_base log grew to megabytes). :func:`progress_bar` draws a tqdm bar on a
terminal and otherwise prints a plain line every tenth of the work or every 30 seconds, whichever
comes first, and a one-line summary at the end.

:func:`use_threads` sets torch's CPU threads before a stage's first tensor op. torch's default uses
every core, and with another busy process on a small machine its threads wait on each other and
a stage can run many times slower than with one thread (docs/LOG.md, "Thread counts per stage").

:func:`deterministic` makes a training run's gradients the same bytes from run to run: the CPU backward of
``grouped_mm`` (the MoE experts kernel) accumulates across threads in a varying order by default, and a
rerun or a resumed run of train_base drifted by about 1e-9 per step (measured at no cost in step time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")


class LogProgress(Generic[T]):
    """A tqdm-like counter (iteration, ``update``, ``set_postfix``, context manager) that writes plain lines."""

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: IO[str] | None = None, every_fraction: float = 0.1,
                 every_s: float = 30.0, clock: Any = time.monotonic, quiet: bool = False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.start_n = initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.every_fraction, self.every_s, self.clock, self.quiet = every_fraction, every_s, clock, quiet
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last = clock()
        self.next_mark = self._mark_after(initial)
        self.closed = False

    def _mark_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = max(self.total * self.every_fraction, 1)
        return (n // step + 1) * step

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.n >= self.next_mark or now - self.last >= self.every_s:
            self.next_mark = self._mark_after(self.n)
            self.last = now
            self._write(now)

    def _write(self, now: float, final: bool = False) -> None:
        if self.quiet:
            return
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        elapsed = now - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        verb = "done" if final else "at"
        self.stream.write(f"{self.desc}: {verb} {done} {self.unit}{share} in {_clock(elapsed)} "
                          f"({rate:.3g} {self.unit}/s){extra}\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.clock(), final=True)


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, stream: IO[str] | None = None) -> Any:
    """A tqdm bar on a terminal, :class:`LogProgress` lines otherwise, nothing when ``disable``."""
    stream = stream if stream is not None else sys.stderr
    if disable:
        return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream, quiet=True)
    if stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)


def _clock(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


def use_threads(num_threads: int) -> int:
    """Set torch's CPU threads (0 keeps torch's default) before any tensor work; returns the count in use."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


@contextmanager
def deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the block (an op without one raises), then the previous setting."""
    import torch

    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)
