"""Ranks for multi-process tests: ``torch.multiprocessing.spawn`` with a deadline, leaving no process behind."""
import faulthandler
import time

import torch.multiprocessing as mp


def _rank_main(rank, fn, args):
    # A rank that dies of a signal (gloo's C++ aborting: CI saw one SIGABRT, "terminate called
    # without an active exception") prints where its Python threads were: in the work or at exit.
    faulthandler.enable()
    fn(rank, *args)


def spawn_ranks(fn, args, nprocs, timeout=180):
    """Run ``fn(rank, *args)`` in ``nprocs`` spawned processes and wait for all of them.

    Raises what a rank raised (torch's ``ProcessRaisedException``), or
    ``TimeoutError`` after ``timeout`` seconds; either way every process is
    gone when this returns.
    """
    context = mp.spawn(_rank_main, args=(fn, args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks did not finish in {timeout}s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
