"""Where the work of a sweep or an evaluation runs: in this process (the default) or on Ray workers.

The work is cut into tasks over sample shards (a sweep: model x attack x shard, each task running its shard through
every eps in order, since a cell reuses the previous eps' points; an evaluation: shard, each task running the whole
cascade). advkit's results are per sample (content-keyed random streams, per-sample budgets and counts, see
:mod:`advkit.rng`), so a shard's results are the rows of the whole run's and merging the shards gives the in-process
numbers, whatever the shard size and the number of workers.

:class:`RayExecutor` runs the tasks on Ray actors (``advkit[ray]``): each actor loads a model once (by its spec, or
the adapter the driver put in Ray's object store) and keeps it for every task it gets; the samples go into the
object store once (``ray.put``) and every task reads them from there. Actors are restarted and their tasks retried
by Ray when a worker process dies (``max_restarts``/``max_task_retries``); a task that raises stops the run with a
:class:`TaskFailed` naming the task, after the driver has stored every shard that finished. Ray is imported only when
a :class:`RayExecutor` starts.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from advkit.errors import AdvkitError, ParameterError

__all__ = ["EXECUTORS", "ExecutorInfo", "RayExecutor", "TaskFailed", "describe_run", "make_executor", "shards"]

EXECUTORS = ("local", "ray")
#: Samples per shard when none is given: enough work per task to hide Ray's scheduling overhead (tens of ms).
DEFAULT_SHARD_SIZE = 64


class TaskFailed(AdvkitError, RuntimeError):
    """A task raised on a worker; the message names the task and the error (finished shards are kept)."""


def shards(n: int, size: int) -> list[tuple[int, int]]:
    """``[begin, end)`` index ranges of ``size`` samples covering ``range(n)`` (the last may be shorter)."""
    if size < 1:
        raise ParameterError(f"shard size must be >= 1, got {size}")
    return [(b, min(b + size, n)) for b in range(0, n, size)] or [(0, 0)]


@dataclass
class ExecutorInfo:
    """What the report records about where the work ran."""

    executor: str
    workers: int = 1
    shard_size: int | None = None
    address: str | None = None
    gpus_per_worker: float = 0.0
    tasks: int = 0
    resumed_tasks: int = 0
    task_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    first_result_seconds: float | None = None

    def summary(self) -> dict:
        busy = sum(self.task_seconds)
        slots = max(self.workers, 1)
        return {
            "executor": self.executor,
            "workers": self.workers,
            "shard_size": self.shard_size,
            "address": self.address,
            "gpus_per_worker": self.gpus_per_worker,
            "tasks": self.tasks,
            "resumed_tasks": self.resumed_tasks,
            "task_seconds": [round(s, 4) for s in self.task_seconds],
            "task_seconds_total": round(busy, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "first_result_seconds": None if self.first_result_seconds is None else round(self.first_result_seconds, 4),
            # wall time the workers were not running a task, per task: scheduling, transfers, start-up
            "overhead_seconds_per_task": round(max(self.wall_seconds * slots - busy, 0.0) / self.tasks, 4)
            if self.tasks
            else None,
        }


class _Context:
    """A worker's state: the models it has loaded, kept for every later task."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.models: dict[str, Any] = {}
        #: ref -> the shipped object a model came from (a later run that ships another one under the same ref replaces it)
        self.shipped: dict[str, Any] = {}

    def model(self, ref: str, adapter: Any = None):
        if ref not in self.models:
            if adapter is not None:
                self.models[ref] = adapter.to(self.device) if hasattr(adapter, "to") else adapter
            else:
                from advkit.model_specs import load_model_ref

                self.models[ref] = load_model_ref(ref, self.device)
        return self.models[ref]

    def receive(self, ref: str, shipped: Any) -> None:
        """Hold the model the driver shipped for ``ref`` (an adapter, or an object-store reference to one, fetched
        only the first time this worker sees that reference)."""
        token = shipped.hex() if _is_object_ref(shipped) else id(shipped)
        if ref in self.models and self.shipped.get(ref) == token:
            return
        if _is_object_ref(shipped):
            import ray

            shipped = ray.get(shipped)
        self.models.pop(ref, None)
        self.model(ref, shipped)
        self.shipped[ref] = token


def _is_object_ref(value: Any) -> bool:
    return type(value).__name__ == "ObjectRef"


def call_task(context: _Context, func: Callable[..., Any], x, y, kwargs: dict[str, Any]) -> Any:
    """Run one task's function in ``context``: first the models the driver shipped (``_adapters``: ref -> adapter
    or an object-store reference to it)."""
    kwargs = dict(kwargs)
    for ref, shipped in (kwargs.pop("_adapters", None) or {}).items():
        context.receive(ref, shipped)
    return func(context, x, y, **kwargs)


@dataclass
class Task:
    """One unit of work: ``func(context, x, y, **kwargs)`` on a worker, ``x``, ``y`` its shard's samples (object-store
    references on Ray: a worker fetches only the shards of its tasks)."""

    key: Any
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    label: str
    x: Any = None
    y: Any = None


def put_shards(executor, x, y, ranges: Sequence[tuple[int, int]]) -> dict[int, tuple[Any, Any]]:
    """Each shard's samples put into the executor's store once (on the CPU), by the shard's first index."""
    return {begin: (executor.put(x[begin:end].cpu()), executor.put(y[begin:end].cpu())) for begin, end in ranges}


class LocalExecutor:
    """Runs tasks one after the other in this process (used by tests and as the reference)."""

    name = "local"

    def __init__(self, device: str = "cpu", shard_size: int | None = None) -> None:
        self.info = ExecutorInfo("local", 1, shard_size)
        self.context = _Context(device)
        self.shard_size = shard_size

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def put(self, value: Any) -> Any:
        return value

    def begin_run(self) -> ExecutorInfo:
        """A fresh record for the next run."""
        self.info = ExecutorInfo("local", 1, self.shard_size)
        return self.info

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any, float]]:
        for task in tasks:
            start = time.perf_counter()
            try:
                out = call_task(self.context, task.func, task.x, task.y, task.kwargs)
            except AdvkitError:
                raise
            except Exception as error:
                raise TaskFailed(f"task {task.label} failed: {type(error).__name__}: {error}") from error
            yield task, out, time.perf_counter() - start


def _worker_class():
    import ray

    @ray.remote
    class ShardWorker:
        """A Ray actor holding loaded models across tasks."""

        def __init__(self, device: str, threads: int | None) -> None:
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.context = _Context(device)

        def pid(self) -> int:
            return os.getpid()

        def call(self, func, x, y, kwargs):
            start = time.perf_counter()
            out = call_task(self.context, func, x, y, kwargs)
            return out, time.perf_counter() - start

    return ShardWorker


class RayExecutor:
    """Tasks on ``workers`` Ray actors (each ``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs and
    ``threads_per_worker`` torch threads); ``address``: ``None`` starts a local Ray (or joins the one this process
    already started), ``"auto"`` or ``HOST:PORT`` joins a cluster. ``keep_alive``: the actors, with the models they
    loaded, serve every run until :meth:`close`."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        shard_size: int | None = None,
        threads_per_worker: int | None = 1,
        keep_alive: bool = False,
        cpus_per_worker: float = 1.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ParameterError(f"workers must be >= 1, got {workers}")
        if gpus_per_worker < 0:
            raise ParameterError(f"gpus per worker must be >= 0, got {gpus_per_worker}")
        self.address, self.workers, self.gpus = address, workers, float(gpus_per_worker)
        self.shard_size = shard_size
        self.threads = threads_per_worker
        self.cpus = float(cpus_per_worker)
        self.keep_alive = keep_alive  # actors (and the models they loaded) stay up between runs until close()
        self.started_ray = False
        self.actors: list[Any] = []
        self.info = ExecutorInfo("ray", workers or 0, shard_size, address, self.gpus)

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise AdvkitError("--executor ray needs Ray: pip install 'advkit[ray]'") from None
        if self.actors:  # kept alive from an earlier run
            return self
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started_ray = True
        if self.workers is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.workers = max(cpus, 1)
        self.info.workers = self.workers
        device = "cuda" if self.gpus > 0 else "cpu"
        worker = _worker_class().options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=-1, max_task_retries=-1, max_concurrency=1
        )
        self.actors = [worker.remote(device, self.threads) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep_alive:
            self.close()

    def close(self) -> None:
        """Stop the actors, and Ray if this executor started it."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def begin_run(self) -> ExecutorInfo:
        """A fresh record for the next run (an executor kept alive serves several)."""
        self.info = ExecutorInfo("ray", self.workers or 0, self.shard_size, self.address, self.gpus)
        return self.info

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests that kill one)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any, float]]:
        """Each task on the next idle actor; yields (task, result, seconds on the worker) as tasks finish. A task that
        raises stops the run: no new task starts, those in flight finish and are yielded (so the caller stores
        them), then :class:`TaskFailed` names the task that raised."""
        import ray

        queue = list(tasks)
        running: dict[Any, tuple[Task, Any]] = {}

        def submit(actor) -> None:
            task = queue.pop(0)
            running[actor.call.remote(task.func, task.x, task.y, dict(task.kwargs))] = (task, actor)

        for actor in self.actors[: len(queue)]:
            submit(actor)
        failure: TaskFailed | None = None
        while running:
            [ready], _ = ray.wait(list(running), num_returns=1)
            task, actor = running.pop(ready)
            try:
                out, seconds = ray.get(ready)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if getattr(error, "cause", None) is not None else error
                if failure is None:  # the first failure stops the run once the tasks in flight are in
                    failure = TaskFailed(f"task {task.label} failed on a Ray worker: {type(cause).__name__}: {cause}")
                    queue.clear()
                continue
            if queue:
                submit(actor)
            yield task, out, seconds  # the caller stores it before the next one arrives
        if failure is not None:
            raise failure


def make_executor(
    executor: str | LocalExecutor | RayExecutor | None,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    shard_size: int | None = None,
    device: str = "cpu",
) -> LocalExecutor | RayExecutor | None:
    """``None``/``"local"``/``"inprocess"``: None (the caller runs in process, no shards); ``"ray"``: a
    :class:`RayExecutor`; an executor object is returned as it is."""
    if executor is None or executor in ("local", "inprocess"):
        if address is not None or workers is not None or gpus_per_worker or shard_size is not None:
            raise ParameterError("--address, --workers, --gpus-per-worker and --shard-size need --executor ray")
        return None
    if isinstance(executor, (LocalExecutor, RayExecutor)):
        return executor
    if executor != "ray":
        raise ParameterError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if shard_size is not None and shard_size < 1:
        raise ParameterError(f"shard size must be >= 1, got {shard_size}")
    return RayExecutor(address=address, workers=workers, gpus_per_worker=gpus_per_worker, shard_size=shard_size)


def shard_size_for(n: int, executor: LocalExecutor | RayExecutor) -> int:
    """The executor's shard size, or :data:`DEFAULT_SHARD_SIZE` (at least one shard per worker when n is small)."""
    if executor.shard_size is not None:
        return executor.shard_size
    workers = getattr(executor, "workers", None) or 1
    return max(1, min(DEFAULT_SHARD_SIZE, math.ceil(max(n, 1) / workers)))


def describe_run(summary: dict | None) -> str | None:
    """One line on where a run's work ran (an :meth:`ExecutorInfo.summary`), or None for an in-process run."""
    if not summary:
        return None
    overhead = summary.get("overhead_seconds_per_task")
    first = summary.get("first_result_seconds")
    wall = summary.get("wall_seconds")
    return (
        f"executor {summary.get('executor')}: {summary.get('workers')} worker(s), shard size "
        f"{summary.get('shard_size')}, {summary.get('tasks')} task(s) run, {summary.get('resumed_tasks')} resumed"
        + ("" if not isinstance(wall, (int, float)) else f", {wall:.1f} s wall")
        + ("" if not isinstance(first, (int, float)) else f", first result after {first:.1f} s")
        + ("" if not isinstance(overhead, (int, float)) else f", {overhead:.3f} s overhead per task")
    )


def progress_bar(total: int, enabled: bool, desc: str):
    """One bar over every task, on stderr (off when not a terminal, like the sweep's)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr, disable=None if enabled else True)
