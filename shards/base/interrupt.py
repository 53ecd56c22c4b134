"""Ctrl-C and SIGTERM for every command line: one exception to catch, one line to print, 128 + signal.

``interrupts()`` makes SIGINT and SIGTERM raise :class:`Interrupt` (a ``KeyboardInterrupt`` that knows its
signal) in the process that entered it — also where the shell started the command with SIGINT ignored
(a background job), so ``kill -INT`` stops a job the way Ctrl-C stops a foreground command. Processes
forked from it (worker pools) that inherit the handler ignore SIGINT — their parent stops them, so a
Ctrl-C that reaches the whole process group prints no worker tracebacks — and die of SIGTERM as by
default (pools stop their workers with it). The command catches ``Interrupt`` (or ``KeyboardInterrupt``)
and prints one line saying what was kept and how to continue, then exits ``e.exit_code``.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt(KeyboardInterrupt):
    """A signal asked the command to stop; ``exit_code`` is 128 + the signal (130 for Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def signal_of(e: BaseException) -> int:
    """The signal behind an interruption (SIGINT for a plain KeyboardInterrupt)."""
    return getattr(e, "signum", signal.SIGINT)


@contextmanager
def interrupts():
    """SIGINT / SIGTERM raise :class:`Interrupt` in this process while the block runs (main thread only;
    elsewhere signals are left alone); forked children ignore them (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def handle(signum, frame):
        if in_forked_child(pid, signum):
            return
        raise Interrupt(signum)

    before = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)


def in_forked_child(pid: int, signum: int) -> bool:
    """For a handler installed by process ``pid``: True when it runs in a child forked from it (a pool's
    worker), after acting as a worker should: SIGINT is left to the parent, SIGTERM ends the worker as
    the default action would (``Pool.terminate`` relies on it)."""
    if os.getpid() == pid:
        return False
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return True


@contextmanager
def deferred():
    """SIGINT / SIGTERM held back while the block runs, delivered when it ends. Start worker pools inside
    it: an exception raised by a signal handler while ``fork`` runs its at-fork hooks is printed and
    dropped by Python ("Exception ignored in ..."), so a Ctrl-C landing there was lost. The workers start
    with the signals held; ``ignore_in_worker`` releases them."""
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_in_worker() -> None:
    """For a pool's initializer: SIGINT ignored (the parent stops the workers), SIGTERM back to its default
    (pools stop their workers with SIGTERM), neither held back (see ``deferred``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    except (AttributeError, OSError, ValueError):
        pass


def fork_context():
    """The multiprocessing context of the project's worker pools: fork where the platform has it (the workers
    touch numpy, PIL and mapped files, never CUDA or DALI), else the platform's default."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)


def start_pool(ctx, workers: int, initializer=ignore_in_worker, initargs: tuple = ()):
    """``ctx.Pool(workers)`` (``ctx``: :func:`fork_context` for the project's pools) started so that a signal can
    stop it at any moment: the forks run with SIGINT / SIGTERM held back (``deferred``) and each worker's
    ``initializer`` must call ``ignore_in_worker`` (the default does). A plain pool inherits the command's Python
    handlers, and a SIGTERM from ``Pool.terminate`` that reaches a worker still starting is dropped by Python's
    at-fork reset: the worker then waits on the queue lock the parent holds, and the parent waits for it forever
    (seen in ``shards verify``). End it with ``close(); join()``, or :func:`stop_pool` when its work is abandoned."""
    with deferred():
        return ctx.Pool(workers, initializer=initializer, initargs=initargs)


def stop_pool(pool, timeout: float = 0.3) -> None:
    """Stop a pool whose work is abandoned, in bounded time. ``Pool.terminate`` can hang for good when the
    interruption lands while its task thread is writing a batch to the workers (seen here: the task thread
    waiting on the queue's write lock, ``terminate`` joining it). So: kill the workers, then terminate in a
    daemon thread for at most ``timeout`` seconds (the workers are gone by then: what is left is bookkeeping);
    the pool's threads are daemons and die with the process."""
    import threading

    for w in getattr(pool, "_pool", []):  # the worker processes (not public API; absent, terminate alone)
        if w.exitcode is None:
            w.kill()
    t = threading.Thread(target=pool.terminate, daemon=True, name="pool-terminate")
    t.start()
    t.join(timeout)
