"""One ordered process pool for the data generators (`common.pretraining_data`, `bert4rec/gen_data_fin.py`).

Results come back in task order and every task carries its own seed (`task_seed`), so outputs are byte-identical
for any number of workers. At most `in_flight_per_worker` tasks per worker are submitted ahead of the consumer, so a
lazily produced task stream (a corpus read block by block) never runs far ahead and memory stays bounded.

Workers are forked (fast: they inherit the parent's memory) only where that is safe: on Linux, with TensorFlow not
imported and no other Python thread running (a fork copies only the calling thread; a lock held by another thread
would stay locked forever in the child). Otherwise they are spawned.
"""

from __future__ import annotations

import collections
import multiprocessing
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np


def task_seed(seed: int, *coordinates: int) -> np.random.SeedSequence:
    """The random stream of one unit of work: a function of (seed, coordinates) only, never of the worker."""
    return np.random.SeedSequence([int(seed), *(int(value) for value in coordinates)])


def fork_is_safe() -> bool:
    others = [thread for thread in threading.enumerate() if thread is not threading.main_thread()]
    return sys.platform.startswith("linux") and "tensorflow" not in sys.modules and not others


class OrderedPool:
    """`with OrderedPool(n, initializer, initargs, finalizer) as pool: for r in pool.map(f, tasks): ...`

    `initializer(*initargs)` runs once per worker (in this process when `num_workers <= 1`, where `finalizer()`
    then runs at the end). `f` and the tasks must be picklable when workers are spawned. Create the pool before
    starting threads of your own (e.g. a tqdm bar), so that it can fork.
    """

    def __init__(self, num_workers: int, initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                 finalizer: Callable[[], Any] | None = None, in_flight_per_worker: int = 2):
        self.num_workers = max(1, int(num_workers))
        self.initializer, self.initargs, self.finalizer = initializer, tuple(initargs), finalizer
        self.in_flight = max(1, in_flight_per_worker) * self.num_workers
        self._pool = None

    def __enter__(self) -> "OrderedPool":
        if self.num_workers <= 1:
            if self.initializer is not None:
                self.initializer(*self.initargs)
            return self
        context = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
        self._pool = context.Pool(self.num_workers, initializer=self.initializer, initargs=self.initargs)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._pool is None:
            if self.finalizer is not None:
                self.finalizer()
            return
        if kind is None:
            self._pool.close()  # workers finish and exit normally
        else:
            self._pool.terminate()
        self._pool.join()
        self._pool = None

    def map(self, function: Callable[[Any], Any], tasks: Iterable) -> Iterator:
        """`function(task)` of every task, in task order."""
        if self._pool is None:
            for task in tasks:
                yield function(task)
            return
        pending = collections.deque()
        for task in tasks:
            pending.append(self._pool.apply_async(function, (task,)))
            if len(pending) >= self.in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
