"""Scale-out: run independent tasks (sweep points, RTL shards) on Ray, embedded in this process by
default or on a cluster by address, or on a plain process pool without Ray.

`run_tasks(fn, args_list, ...)` yields `(index, TaskOutcome)` as tasks finish.  On Ray a task whose
worker process dies (killed, out of memory) is retried once (`max_retries=1`); an exception raised
by the task itself is not retried (it would raise again).  Either way a failed task is reported with
its error, never raised, so the caller keeps what finished.

Only host/ imports this module: nothing in hdl/ or compiler/ imports Ray.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence

__all__ = ["ScaleOutError", "TaskOutcome", "check_address", "run_tasks", "ray_session"]

# attempts of a task whose worker died: the first run plus this many retries
WORKER_RETRIES = 1


class ScaleOutError(RuntimeError):
    """Ray is missing, or the cluster at the given address cannot be reached."""


@dataclasses.dataclass
class TaskOutcome:
    ok: bool
    value: object = None
    error: str | None = None              # one line: what failed and why
    worker_died: bool = False             # the worker process was lost (after the retry on Ray)


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast and clearly when a `HOST:PORT` Ray address does not answer (ray.init would wait
    about a minute and then raise a long ConnectionError).  `auto` and `ray://` addresses are
    left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ScaleOutError(f"--ray-address {address!r}: expected HOST:PORT (the address `ray start "
                            "--head` prints), `auto` or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ScaleOutError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                            "start one with `ray start --head` or omit --ray-address to run Ray "
                            "embedded in this process") from None


class ray_session:
    """Context manager: Ray connected for the block.  `address=None` starts Ray embedded in this
    process (shut down at the end); an address joins that cluster (left running).  A Ray that is
    already initialised (a caller's own session) is used as it is."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self._owned = False

    def __enter__(self):
        try:
            import ray
        except ImportError:
            raise ScaleOutError("ray is not installed: pip install 'softnpu[scale]', or use --no-ray "
                                "where the command offers it") from None
        if ray.is_initialized():
            return ray
        if self.address:
            check_address(self.address)
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address:
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError) as exc:
                raise ScaleOutError(f"--ray-address {self.address}: cannot join the cluster: "
                                    f"{str(exc).splitlines()[0]}") from None
        else:
            _start_local(ray, self.num_cpus, kwargs)
        self._owned = True
        return ray

    def __exit__(self, *exc):
        if self._owned:
            import ray

            ray.shutdown()
        return False


# Ray gives a new local node's raylet 30 s to register with its GCS, then raises a bare Exception
# with this text; on a 2-core machine a raylet that never started has happened without load
_STARTUP_TIMEOUT = "timed out during startup"


def _start_local(ray, num_cpus: int | None, kwargs: dict, attempts: int = 2) -> None:
    """ray.init of a local instance, started again (once, by default) if its node does not come up."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, **kwargs)
            return
        except Exception as exc:
            if _STARTUP_TIMEOUT not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()


def _describe(exc: BaseException) -> tuple[str, bool]:
    """A one-line reason and whether the worker died, for a Ray or a local exception."""
    try:
        from ray import exceptions as rex
    except ImportError:                                   # pragma: no cover - ray missing
        rex = None
    if rex is not None:
        died = (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
                getattr(rex, "OutOfMemoryError", rex.WorkerCrashedError))
        if isinstance(exc, died):
            return (f"the worker running it died ({type(exc).__name__}), also on its retry", True)
        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, rex.RayTaskError):
                return str(cause).splitlines()[-1], False
            return f"{type(cause).__name__}: {cause}", False
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(exc, BrokenProcessPool):
        return "the worker process running it died", True
    return f"{type(exc).__name__}: {exc}", False


def _guarded(fn: Callable, args: tuple):
    """Run in the pool's child: an exception comes back as text with its traceback's last frames."""
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"


def run_tasks(fn: Callable, args_list: Sequence[tuple], *, use_ray: bool = True, address: str | None = None,
              workers: int | None = None, num_cpus_per_task: float = 1) -> Iterator[tuple[int, TaskOutcome]]:
    """Run `fn(*args)` for every args tuple; yield `(index, TaskOutcome)` in order of completion.
    `workers`: processes of the pool without Ray (default: the CPU count); with embedded Ray the
    CPUs Ray may use."""
    if not args_list:
        return
    if use_ray:
        yield from _run_ray(fn, args_list, address, workers, num_cpus_per_task)
    else:
        yield from _run_pool(fn, args_list, workers)


def _run_ray(fn, args_list, address, workers, num_cpus_per_task):
    with ray_session(address, num_cpus=None if address else workers) as ray:
        remote = ray.remote(max_retries=WORKER_RETRIES, retry_exceptions=False,
                            num_cpus=num_cpus_per_task)(fn)
        # a large argument shared by many tasks (a network's .tflite) goes to the object store once
        shared: dict[int, object] = {}

        def by_ref(arg):
            if isinstance(arg, (bytes, bytearray)) and len(arg) > 1 << 20:
                if id(arg) not in shared:
                    shared[id(arg)] = ray.put(arg)
                return shared[id(arg)]
            return arg

        pending = {remote.remote(*map(by_ref, args)): i for i, args in enumerate(args_list)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            index = pending.pop(ref)
            try:
                yield index, TaskOutcome(True, ray.get(ref))
            except Exception as exc:          # a Ray error: reported, the other tasks go on
                reason, died = _describe(exc)
                yield index, TaskOutcome(False, error=reason, worker_died=died)


def _run_pool(fn, args_list, workers):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = workers or os.cpu_count() or 1
    # spawn: the tasks start from a clean interpreter, as Ray's workers do (no forked threads)
    with ProcessPoolExecutor(max_workers=min(workers, len(args_list)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_guarded, fn, args): i for i, args in enumerate(args_list)}
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    ok, value = future.result()
                except Exception as exc:
                    reason, died = _describe(exc)
                    yield index, TaskOutcome(False, error=reason, worker_died=died)
                    continue
                yield index, (TaskOutcome(True, value) if ok else TaskOutcome(False, error=value))
