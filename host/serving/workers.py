"""N device workers behind a bounded queue.

A worker is a device slot: its devices (one per NPU configuration its models target) and a
runtime per model, so weights are placed once and re-placed only when another model ran on the
device in between.  A request's thread checks a free worker out, runs its examples and checks it
back in: no hand-off to another thread, whose wake-up would cost more than a small model's run.
When every worker is busy the request waits, in arrival order, in a queue of at most `max_queue`
requests; one more is refused at once (`QueueFull`: the service answers RESOURCE_EXHAUSTED).  A
request whose deadline passes, or whose caller goes away, while it waits never reaches a device.

With `batching` (host/serving/batching.py) requests go through a batcher instead: batch threads
check a worker out once per batch of requests for one model version and run them back to back,
each request getting its own results or error.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from softnpu.hdl.config import NPUConfig
from softnpu.host.devices.device import Device, open_device
from softnpu.host.runtime import Result, Runtime
from softnpu.host.serving.batching import Batch, Batcher, BatchingParameters

__all__ = ["WorkerPool", "Worker", "QueueFull", "JobExpired", "PoolClosed"]

log = logging.getLogger("softnpu.serve")

RUNTIMES_PER_WORKER = 8
WATCH_S = 0.5           # how often the watcher looks at idle workers' device processes
_POLL_S = 0.05          # how often a waiting request looks at its caller's cancellation


class QueueFull(RuntimeError):
    """Every worker is busy and max_queue requests are waiting already."""


class JobExpired(TimeoutError):
    """The request's deadline passed (or its caller cancelled) before or while a device ran it."""


class PoolClosed(RuntimeError):
    """The pool is shutting down."""


class Worker:
    """One device slot: its devices by NPU configuration and its runtimes by model."""

    def __init__(self, index: int, device_factory: Callable[[NPUConfig], Device]):
        self.index = index
        self.device_factory = device_factory
        self.devices: dict[str, Device] = {}
        self.runtimes: collections.OrderedDict = collections.OrderedDict()

    def runtime(self, model) -> Runtime:
        runtime = self.runtimes.get(model.key)
        if runtime is not None:
            self.runtimes.move_to_end(model.key)
            return runtime
        config = model.manifest.npu_config
        key = config.to_json()
        if key not in self.devices:
            self.devices[key] = self.device_factory(config)
        runtime = Runtime(model.bundle, self.devices[key])
        self.runtimes[model.key] = runtime
        while len(self.runtimes) > RUNTIMES_PER_WORKER:
            self.runtimes.popitem(last=False)
        return runtime

    def dead(self) -> list[Device]:
        """Its devices whose backend process died."""
        return [d for d in self.devices.values() if not d.alive()]

    def forget(self, key) -> bool:
        """Drop the runtime of a model (its bundle and weights go with it); True if it had one."""
        return self.runtimes.pop(key, None) is not None

    def close(self):
        for device in self.devices.values():
            try:
                device.close()
            except Exception:       # closing one device must not keep the others open
                pass
        self.devices.clear()
        self.runtimes.clear()


class WorkerPool:
    """`workers` device slots shared by the request threads, with a bounded wait queue."""

    def __init__(self, workers: int = 1, max_queue: int = 16, backend: str = "iss",
                 device_factory: Callable[[NPUConfig], Device] | None = None,
                 run_timeout_s: float | None = 60.0, batching: BatchingParameters | None = None):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
        factory = device_factory or (lambda config: open_device(backend, config))
        self.run_timeout_s = run_timeout_s
        self.max_queue = max_queue
        self._all = [Worker(i, factory) for i in range(workers)]
        self._free = list(reversed(self._all))
        self._cond = threading.Condition()
        self._waiting = 0
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._retired: set = set()     # model keys to drop from the workers busy at the moment
        self.counts = collections.Counter()        # completed, failed, expired, rejected
        self.batcher: Batcher | None = None
        if batching is not None:
            self.batcher = Batcher(batching, self._run_batch, batching.num_batch_threads or workers,
                                   queue_full=QueueFull, expired=JobExpired, tally=self._tally,
                                   closed=lambda: PoolClosed("the server is shutting down"))

    def _tally(self, what: str) -> None:
        with self._cond:
            self.counts[what] += 1

    @property
    def workers(self) -> int:
        return len(self._all)

    def queued(self) -> int:
        """Requests waiting for a worker (or in a batch) now."""
        return self._waiting + (self.batcher.queued() if self.batcher is not None else 0)

    def _checkout(self, deadline: float | None, cancelled: Callable[[], bool],
                  bounded: bool = True) -> Worker:
        with self._cond:
            if self._closed:
                raise PoolClosed("the server is shutting down")
            if not self._free:
                if bounded and self._waiting >= self.max_queue:
                    self.counts["rejected"] += 1
                    raise QueueFull(f"request queue full ({self.max_queue} requests waiting for "
                                    f"{self.workers} device worker(s)); retry later")
                self._waiting += 1
                try:
                    while not self._free:
                        left = None if deadline is None else deadline - time.monotonic()
                        if (left is not None and left <= 0) or cancelled():
                            self.counts["expired"] += 1
                            raise JobExpired("deadline exceeded while the request waited for a device")
                        if self._closed:
                            raise PoolClosed("the server is shutting down")
                        self._cond.wait(_POLL_S if left is None else min(left, _POLL_S))
                finally:
                    self._waiting -= 1
            return self._free.pop()

    def _checkin(self, worker: Worker):
        with self._cond:
            for key in [k for k in self._retired if k in worker.runtimes]:
                worker.forget(key)
            self._free.append(worker)
            if len(self._free) == len(self._all):
                self._retired.clear()
            self._cond.notify()

    def run(self, model, examples: list[dict], deadline: float | None = None,
            cancelled: Callable[[], bool] = lambda: False, trace: bool = False) -> list[Result]:
        """Run `examples` (dicts of int8 inputs) of a served model on a free worker.

        `deadline` is a time.monotonic() value; `trace` also reads the per-layer marker trace.
        Raises QueueFull, JobExpired, PoolClosed, or what the runtime raises (InputError,
        DeviceError, DeviceTimeout)."""
        if self.batcher is not None:
            return self.batcher.submit(model, examples, deadline, cancelled, trace)
        worker = self._checkout(deadline, cancelled)
        try:
            results = self._infer(worker, model, examples, deadline, cancelled, trace)
        finally:
            self._checkin(worker)
        return results

    def _infer(self, worker: Worker, model, examples: list[dict], deadline: float | None,
               cancelled: Callable[[], bool], trace: bool) -> list[Result]:
        """One request's examples on a checked-out worker, counted."""
        try:
            runtime = worker.runtime(model)
            results = []
            for example in examples:
                timeout = self.run_timeout_s
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 or cancelled():
                        raise JobExpired("deadline exceeded while the request ran")
                    timeout = left if timeout is None else min(timeout, left)
                results.append(runtime.infer(example, timeout_s=timeout, trace=trace))
        except Exception as exc:
            with self._cond:
                self.counts["expired" if isinstance(exc, JobExpired) else "failed"] += 1
            raise
        with self._cond:
            self.counts["completed"] += 1
        return results

    def _run_batch(self, batch: Batch) -> None:
        """A batch thread's work: one worker for the whole batch, its requests back to back; each
        request ends with its own results or error (one that faults or expired fails alone)."""
        try:
            worker = self._checkout(None, lambda: False, bounded=False)
        except Exception as exc:                # the pool closed
            for task in batch.tasks:
                task.finish(error=exc)
            return
        try:
            for task in batch.tasks:
                if task.expired():
                    with self._cond:
                        self.counts["expired"] += 1
                    task.finish(error=JobExpired("deadline exceeded while the request waited for a batch"))
                    continue
                try:
                    task.finish(self._infer(worker, task.model, task.examples, task.deadline,
                                            task.cancelled, task.trace))
                except Exception as exc:
                    task.finish(error=exc)
        finally:
            self._checkin(worker)

    # -- supervision ------------------------------------------------------------------------------
    def watch(self, interval_s: float = WATCH_S) -> None:
        """Start the watcher: every `interval_s` it restarts the dead device processes of idle
        workers, so a device that died between requests is replaced before a request meets it."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(interval_s,), daemon=True,
                                         name="softnpu-worker-watcher")
        self._watcher.start()

    def _watch(self, interval_s: float) -> None:
        while not self._watch_stop.wait(interval_s):
            try:
                self.revive_idle()
            except Exception:                   # the watcher must outlive any one failure
                log.exception("worker watcher")

    def revive_idle(self) -> int:
        """Restart the dead devices of the idle workers now; returns how many were restarted.
        A worker being revived is checked out, so no request uses it meanwhile."""
        with self._cond:
            if self._closed:
                return 0
            sick = [w for w in self._free if w.dead()]
            for worker in sick:
                self._free.remove(worker)
        restarted = 0
        for worker in sick:
            try:
                for device in worker.dead():
                    log.warning("worker %d: %s device process died while idle; restarting it",
                                worker.index, device.backend)
                    device.restart()
                    restarted += 1
                    with self._cond:
                        self.counts["restarted"] += 1
            except Exception as exc:            # it is retried at the next look, or by a request
                log.error("worker %d: device restart failed: %s", worker.index, exc)
            finally:
                self._checkin(worker)
        return restarted

    def retire(self, model) -> None:
        """A model was unloaded: every worker drops its runtime (now if idle, else at check-in),
        so its weights and bundle are released."""
        with self._cond:
            for worker in self._free:
                worker.forget(model.key)
            if len(self._free) < len(self._all):
                self._retired.add(model.key)
            else:
                self._retired.clear()

    def settle(self, deadline: float) -> bool:
        """Wait until no request waits or runs, or until `deadline` (time.monotonic()); True if
        the pool went idle."""
        with self._cond:
            while (self._waiting or len(self._free) < len(self._all)
                   or (self.batcher is not None and self.batcher.busy())):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, _POLL_S))
            return True

    def close(self, timeout_s: float = 5.0):
        """Refuse new requests, wake the waiting ones (PoolClosed), wait up to `timeout_s` for
        the running ones, close the devices."""
        deadline = time.monotonic() + timeout_s
        if self.batcher is not None:            # what is still queued runs now, or fails PoolClosed
            self.batcher.close(timeout_s / 2)
        if self._watcher is not None:
            self._watch_stop.set()
            self._watcher.join(timeout_s)
            self._watcher = None
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while len(self._free) < len(self._all) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(_POLL_S, deadline - time.monotonic())))
            idle = list(self._free)
        for worker in idle:
            worker.close()
