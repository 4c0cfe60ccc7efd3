"""One CPU thread for the measurement of small matrices while the CPUs are oversubscribed.

A sample is hundreds of small tensor operations (products of a vector with a matrix of a few
MiB, small reductions). With torch's OpenMP intra-op parallelism each of them is a parallel
region whose threads meet at a barrier. When more threads want to run than there are CPUs
(DataLoader workers doing augmentation, another job on the node), a region waits for whichever
of its threads the scheduler has just descheduled, so a measurement that takes 5 ms takes tens to
thousands. Measured on 2 cores with two busy processes beside it, the same four Lanczos streams:
9.4 ms median (16 ms worst) on one thread, 15.9 ms median (470 ms worst) on two; a GPT-2 built
from its config (4 blocks, width 128), trained on the CPU beside another job, spent 540 ms per
measurement on two threads and 22 ms on one. On free CPUs the second thread pays (the products are
bandwidth-bound): one thread made a sample cost more, MLP +40.0% -> +46.7% and GPT +24.2% ->
+31.8% of the step (``benchmarks/overhead.py``'s workloads, interleaved).

So :func:`~ndtracker.spectra.measure_many` and the activation capture run on one intra-op thread
while the CPUs are oversubscribed (the 1-minute load average is above :data:`OVERSUBSCRIBED`
times the CPUs this process may use: a loop alone, its threads on every CPU, keeps it near 1
times) and every CPU matrix of the batch has at most :data:`ONE_THREAD_ELEMENTS` elements, and
restore the caller's setting after (on an error too). Only under the OpenMP backend,
where changing the count is cheap (well under a microsecond) and allowed at any time; torch's
native thread pool refuses a change once parallel work has started, so there nothing is changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator

import torch

__all__ = ["ONE_THREAD_ELEMENTS", "OVERSUBSCRIBED", "one_thread"]

ONE_THREAD_ELEMENTS = 2**21  # elements of a matrix (8 MiB of float32) up to which one thread is used
OVERSUBSCRIBED = 1.5  # load average over CPUs above which the CPUs count as oversubscribed


@contextlib.contextmanager
def one_thread(matrices: Iterable[torch.Tensor]) -> Iterator[None]:
    """Run the block on one intra-op thread if the CPUs are oversubscribed and every CPU matrix is
    small (see the module doc)."""
    threads = torch.get_num_threads()
    if threads == 1 or not _openmp() or not _oversubscribed() or any(
        m.device.type == "cpu" and m.numel() > ONE_THREAD_ELEMENTS for m in matrices
    ):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _openmp() -> bool:
    """Whether torch's intra-op parallelism is OpenMP's (its thread count may change at any time)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _oversubscribed() -> bool:
    """Whether clearly more threads have wanted to run than this process has CPUs: a 1-minute load
    average above :data:`OVERSUBSCRIBED` times the CPUs (a training loop alone keeps the load near
    the CPU count, its threads on every CPU); False where the platform does not say (Windows)."""
    try:
        return os.getloadavg()[0] > OVERSUBSCRIBED * _cpus()
    except (AttributeError, OSError):
        return False


@functools.cache
def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
