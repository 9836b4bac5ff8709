"""Server-side request batching (`softnpu serve --enable-batching`), as TensorFlow Serving does it.

Requests for the same model version that arrive close together are merged into one batch of at
most `max_batch_size` examples; a batch thread checks a device worker out once and runs the
batch's examples back to back on it (the NPU program is batch-1), then hands each request its own
results or its own error: a request that faults the device, or whose deadline passed while it
waited, fails alone and the rest of its batch goes on.

A batch is open while it waits: requests join it until it is full; it is dispatched when it is
full, or when its oldest request has waited `batch_timeout_micros`, and a batch thread is free.
With a timeout of 0 (the default) a lone request goes at once, and under load the requests that
arrive while every worker is busy share the next batch.  Requests with more examples than
`max_batch_size` are a batch by themselves (TF Serving refuses them unless it may split them).
At most `max_enqueued_batches` batches wait per model version; a request that would open one more
is refused at once (QueueFull: RESOURCE_EXHAUSTED), as TF Serving does.

Parameters come from TF Serving's --batching_parameters_file, a BatchingParameters message in
protobuf text format:

    max_batch_size { value: 8 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 16 }
    num_batch_threads { value: 2 }

(`name: N` is accepted for `name { value: N }` too).  num_batch_threads defaults to the number of
device workers: more threads than workers only wait for a worker.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["BatchingParameters", "BatchingError", "Batcher", "PARAMETERS"]

log = logging.getLogger("softnpu.serve")

_POLL_S = 0.05          # how often a waiting request looks at its caller's cancellation

# TF Serving's BatchingParameters fields this server implements, with their meaning
PARAMETERS = {
    "max_batch_size": "most examples in one batch",
    "batch_timeout_micros": "longest a batch waits to fill, microseconds (0: go when a thread is free)",
    "max_enqueued_batches": "batches that may wait per model version; one more is RESOURCE_EXHAUSTED",
    "num_batch_threads": "batches run at once (default: the number of device workers)",
}
# the other fields of TF Serving's message: refused by name rather than silently ignored
_UNSUPPORTED = ("thread_pool_name", "allowed_batch_sizes", "pad_variable_length_inputs",
                "enable_large_batch_splitting", "max_execution_batch_size")


class BatchingError(ValueError):
    """A bad batching parameter or parameters file."""


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = 8
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 16
    num_batch_threads: int | None = None        # None: one per device worker

    def __post_init__(self):
        for name, low in (("max_batch_size", 1), ("batch_timeout_micros", 0), ("max_enqueued_batches", 1),
                          ("num_batch_threads", 1)):
            value = getattr(self, name)
            if value is None and name == "num_batch_threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BatchingError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.batch_timeout_micros > 60_000_000:
            raise BatchingError(f"batch_timeout_micros {self.batch_timeout_micros} is over a minute; "
                                "a batch would outwait every request's deadline")

    @property
    def timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    @classmethod
    def parse(cls, text: str, source: str = "batching parameters") -> BatchingParameters:
        """Parameters from TF Serving's text format; BatchingError names the line and field."""
        token = re.compile(r"\s+|#[^\n]*|[A-Za-z_]\w*|-?[0-9][\w.+-]*|\"[^\"\n]*\"|[{}:;,]|.")
        tokens = []                 # (text, line)
        line = 1
        for m in token.finditer(text):
            t = m.group()
            if not t.isspace() and not t.startswith("#"):
                tokens.append((t, line))
            line += t.count("\n")
        values: dict[str, int] = {}
        i = 0

        def fail(message, at):
            where = tokens[at][1] if at < len(tokens) else line
            raise BatchingError(f"{source}:{where}: {message}")

        def expect(t, at):
            if at >= len(tokens) or tokens[at][0] != t:
                got = repr(tokens[at][0]) if at < len(tokens) else "the end of the file"
                fail(f"expected {t!r}, got {got}", at)
            return at + 1

        while i < len(tokens):
            name, start = tokens[i][0], i
            if name in ";,":
                i += 1
                continue
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                fail(f"expected a field name, got {name!r}", i)
            if name in _UNSUPPORTED:
                fail(f"{name} is a TF Serving batching parameter this server does not support "
                     f"(supported: {', '.join(PARAMETERS)})", i)
            if name not in PARAMETERS:
                fail(f"unknown field {name!r} (batching parameters: {', '.join(PARAMETERS)})", i)
            if name in values:
                fail(f"{name} is given twice", i)
            i += 1
            if i < len(tokens) and tokens[i][0] == ":":
                i += 1
            if i < len(tokens) and tokens[i][0] == "{":
                i = expect("value", i + 1)
                i = expect(":", i)
                number, i = i, i + 1
                i = expect("}", i)
            else:
                number, i = i, i + 1
            if number >= len(tokens):
                fail(f"{name}: no value", start)
            raw = tokens[number][0]
            if not re.fullmatch(r"-?[0-9]+", raw):
                fail(f"{name}: {raw!r} is not an integer", number)
            values[name] = int(raw)
            try:
                cls(**{name: values[name]})
            except BatchingError as exc:
                fail(str(exc), number)
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> BatchingParameters:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BatchingError(f"cannot read the batching parameters file {path}: {exc}") from None
        return cls.parse(text, str(path))

    def describe(self, workers: int) -> str:
        threads = self.num_batch_threads or workers
        return (f"batching: up to {self.max_batch_size} examples per batch, timeout "
                f"{self.batch_timeout_micros} us, {self.max_enqueued_batches} batches queued per model, "
                f"{threads} batch thread(s)")


# ----------------------------------------------------------------------------------------------
# The scheduler
# ----------------------------------------------------------------------------------------------
_QUEUED, _RUNNING, _DONE = range(3)


class Task:
    """One request in a batch: its examples, and where its results or error go."""

    __slots__ = ("model", "examples", "deadline", "cancelled", "trace", "state", "results", "error",
                 "_done")

    def __init__(self, model, examples, deadline, cancelled, trace):
        self.model, self.examples, self.deadline = model, examples, deadline
        self.cancelled, self.trace = cancelled, trace
        self.state = _QUEUED
        self.results = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def size(self) -> int:
        return len(self.examples)

    def expired(self) -> bool:
        return (self.deadline is not None and time.monotonic() >= self.deadline) or self.cancelled()

    def finish(self, results=None, error: BaseException | None = None) -> None:
        self.results, self.error, self.state = results, error, _DONE
        self._done.set()


class Batch:
    """Requests for one model version, dispatched together."""

    __slots__ = ("model", "tasks", "size", "opened")

    def __init__(self, model):
        self.model = model
        self.tasks: list[Task] = []
        self.size = 0
        self.opened = time.monotonic()


class Batcher:
    """Batches of requests per model version, run by `threads` batch threads with `execute(batch)`
    (which runs each task and finishes it: WorkerPool._run_batch)."""

    def __init__(self, params: BatchingParameters, execute: Callable[[Batch], None], threads: int,
                 queue_full: Callable[[str], Exception], closed: Callable[[], Exception],
                 expired: Callable[[str], Exception], tally: Callable[[str], None] = lambda what: None):
        self.params = params
        self._tally = tally             # the pool's counts: 'rejected' and 'expired' requests
        self._execute = execute
        self._queue_full, self._closed_error, self._expired = queue_full, closed, expired
        self._cond = threading.Condition()
        self._queues: dict = {}            # model key -> deque of Batch, oldest first
        self._queued = 0                   # tasks waiting in batches
        self._running = 0                  # batches being run
        self._closing = False
        self.on_batch: Callable[[int, int], None] | None = None     # (examples, requests) per batch
        self.counts = collections.Counter()        # batches, tasks, examples, rejected, expired
        self._threads = [threading.Thread(target=self._loop, name=f"softnpu-batch-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def queued(self) -> int:
        """Requests waiting in a batch now."""
        return self._queued

    def busy(self) -> bool:
        return bool(self._queued or self._running)

    # -- callers --------------------------------------------------------------------------------
    def submit(self, model, examples: list, deadline: float | None, cancelled: Callable[[], bool],
               trace: bool):
        """Queue a request, wait for its batch to run, return its results or raise its error."""
        task = Task(model, examples, deadline, cancelled, trace)
        with self._cond:
            if self._closing:
                raise self._closed_error()
            queue = self._queues.setdefault(model.key, collections.deque())
            batch = queue[-1] if queue else None
            if batch is None or batch.size + task.size > self.params.max_batch_size:
                if len(queue) >= self.params.max_enqueued_batches:
                    self.counts["rejected"] += 1
                    self._tally("rejected")
                    raise self._queue_full(
                        f"batch queue of {model.name}:{model.version} full ({len(queue)} batches of up to "
                        f"{self.params.max_batch_size} examples waiting); retry later")
                batch = Batch(model)
                queue.append(batch)
            batch.tasks.append(task)
            batch.size += task.size
            self._queued += 1
            self._cond.notify_all()
        while not task._done.wait(_POLL_S):
            if task.state == _QUEUED and task.expired():
                with self._cond:
                    if task.state == _QUEUED:       # not taken meanwhile: leave the batch
                        self._withdraw(task)
                        self.counts["expired"] += 1
                        self._tally("expired")
                        raise self._expired("deadline exceeded while the request waited for a batch")
        if task.error is not None:
            raise task.error
        return task.results

    def _withdraw(self, task: Task) -> None:
        queue = self._queues[task.model.key]
        for batch in queue:
            if task in batch.tasks:
                batch.tasks.remove(task)
                batch.size -= task.size
                if not batch.tasks:
                    queue.remove(batch)
                break
        if not queue:
            del self._queues[task.model.key]
        self._queued -= 1
        task.state = _DONE
        self._cond.notify_all()

    # -- batch threads ----------------------------------------------------------------------------
    def _take(self) -> tuple[Batch | None, float | None]:
        """(the batch to run next, None when none is ready; when the next one is due) under the
        lock: the oldest batch that is full, has one queued behind it, or timed out (any batch
        when closing)."""
        now = time.monotonic()
        ready, due = None, None
        for queue in self._queues.values():
            head = queue[0]
            go = head.opened + self.params.timeout_s
            if (self._closing or head.size >= self.params.max_batch_size or len(queue) > 1
                    or go <= now):
                if ready is None or head.opened < ready.opened:
                    ready = head
            else:
                due = go if due is None else min(due, go)
        return ready, due

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, due = self._take()
                    if batch is not None:
                        break
                    if self._closing and not self._queues:
                        return
                    self._cond.wait(None if due is None else max(0.0, due - time.monotonic()))
                queue = self._queues[batch.model.key]
                queue.popleft()
                if not queue:
                    del self._queues[batch.model.key]
                for task in batch.tasks:
                    task.state = _RUNNING
                self._queued -= len(batch.tasks)
                self._running += 1
                self.counts["batches"] += 1
                self.counts["tasks"] += len(batch.tasks)
                self.counts["examples"] += batch.size
            try:
                if self.on_batch is not None:
                    self.on_batch(batch.size, len(batch.tasks))
                self._execute(batch)
            except BaseException as exc:           # execute finishes every task; this is a bug
                log.exception("batch of %s:%s", batch.model.name, batch.model.version)
                for task in batch.tasks:
                    if task.state != _DONE:
                        task.finish(error=exc)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop taking requests; the batches still queued run now (no timeout waited) unless
        `timeout_s` passes first, then what is left fails with the pool's closed error."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            for queue in self._queues.values():
                for batch in queue:
                    for task in batch.tasks:
                        task.finish(error=self._closed_error())
            self._queues.clear()
            self._queued = 0
