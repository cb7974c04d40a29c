"""Per-image model work on Ray Data: decode on CPU tasks, run the model in actors, collect Parquet parts.

The jobs that touch every image (embed, predict, attribute) can run their model on a Ray cluster
(``--engine ray``) instead of in their own process. The workspace stays with the job: the job's process
(the Ray *driver*) sends each image's id and path into a Ray dataset, and

1. CPU tasks decode the images with the same code as the local path (:func:`core.data.images.load_rgb`:
   pixel limit, EXIF orientation, RGB conversion, the same resize), to ``uint8`` at the model's size;
2. a fixed pool of actors (:class:`ray.data.ActorPoolStrategy`) each load the model once and run an
   :class:`ImageTask` on every batch (on a GPU when the cluster has one);
3. the driver streams the results back: a pool's vectors are written as Parquet parts into the job's
   staging folder (:func:`map_images`), which the job then loads into DuckDB in one short write
   transaction, exactly as the local path does; predictions and attributions are gathered in memory
   (:func:`map_images_to_arrays`), as the local path holds them, and stored the same way.

Results come back to the driver rather than being written by the workers, so nothing but the image files
has to be shared with the cluster: each image path must be readable under the same name on every worker
node (a shared filesystem such as NFS mounted at the same path). The workers need this project and its
dependencies installed (``pip install`` on the cluster's image); when connecting to a cluster, the
``core`` package is also shipped with the job (``runtime_env py_modules``) so its code always matches.

Without an address, a local Ray runtime is started for the job and shut down after it
(``ray.init(num_cpus=...)``). An already running Ray session (a notebook, a test) is used as it is.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.progress import Progress, as_progress

ENGINES = ("local", "ray")
PART_ROWS = 8192  # result rows per staged Parquet part
BLOCK_BATCHES = 4  # input rows per Ray block: this many batches (blocks are the unit of decode tasks)
DECODE_THREADS = 2  # threads per decode task (PIL and torch release the GIL)


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


class ImageReadError(RuntimeError):
    """An image could not be read on a worker (missing there, unreadable, over the pixel limit)."""


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray and how many model replicas to run.

    address: ``None`` starts a local runtime for the job; ``auto`` joins the cluster this machine is part
    of; ``ray://host:10001`` connects a Ray Client. actors: model replicas (default: one per GPU if the
    cluster has GPUs, else one per node). num_cpus: CPUs of a local runtime (default: all of this machine's).
    """

    address: str | None = None
    actors: int | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"the number of Ray actors must be at least 1, got {self.actors}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"a local Ray runtime needs at least 1 CPU, got {self.num_cpus}")


class ImageTask(Protocol):
    """What an actor runs on each batch: built on the driver, shipped to every actor once."""

    def setup(self, device: str) -> None:
        """Called once in each actor before the first batch (move the model to ``device``, ...)."""

    def __call__(self, pixels: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Result columns (``image_id`` first) for ``pixels`` (N x S x S x 3 uint8) and the batch's other
        input columns (``image_id`` and whatever the job sent along, e.g. ``target``)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise RayUnavailableError("--engine ray needs Ray Data: pip install 'ray[data]'") from exc
    return ray


@contextmanager
def ray_runtime(config: RayConfig = RayConfig()) -> Iterator[Any]:
    """A Ray session for one job: the running one if there is one, else connect to ``config.address`` or
    start a local runtime, and shut down what was started here when the job ends."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
    try:
        if config.address:
            import core

            ray.init(address=config.address, runtime_env={"py_modules": [str(Path(core.__file__).parent)]},
                     **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        else:
            # Ray runs its workers at nice 15 to keep its own daemons responsive; here the workers *are* the
            # job, so they run at the job's priority (else any other work on the machine starves them).
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=config.num_cpus or os.cpu_count() or 1, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {config.address!r}" if config.address else "a local Ray runtime"
        raise RayUnavailableError(f"could not start or reach {where}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def decode_batch(batch: dict[str, np.ndarray], *, size: int, max_pixels: int,
                 threads: int = DECODE_THREADS) -> dict[str, np.ndarray]:
    """The batch with its ``path`` column replaced by ``pixels`` (N x size x size x 3 uint8), decoded as the
    local path decodes (:func:`core.data.images.load_rgb`)."""
    from core.data.images import load_rgb

    paths = [str(p) for p in batch["path"]]
    ids = batch["image_id"]
    out = np.empty((len(paths), size, size, 3), np.uint8)

    def fill(i: int) -> None:
        try:
            out[i] = load_rgb(paths[i], size, max_pixels=max_pixels)
        except Exception as exc:
            raise ImageReadError(f"image {int(ids[i])} ({paths[i]}) could not be decoded on a Ray worker: "
                                 f"{type(exc).__name__}: {exc}") from exc

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(fill, range(len(paths))))
    rest = {k: v for k, v in batch.items() if k != "path"}
    return {**rest, "pixels": out}


class TaskActor:
    """A Ray Data callable class: holds one :class:`ImageTask` (its model loaded once per actor)."""

    def __init__(self, task: Any, threads: int, use_gpu: bool):
        import ray
        import torch

        if isinstance(task, ray.ObjectRef):
            task = ray.get(task)
        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        task.setup(device)
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        return self.task(pixels, batch)


@dataclass(frozen=True)
class RayPlan:
    """How a run is laid out on the cluster (decided from its resources)."""

    actors: int
    threads_per_actor: int
    actor_cpus: float
    decode_cpus: float
    gpus_per_actor: float


def plan(ray: Any, config: RayConfig) -> RayPlan:
    """Actors, their threads and resources from the cluster's CPUs, GPUs and nodes."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")))
    actors = config.actors or (int(gpus) if gpus >= 1 else nodes)
    # Each actor reserves one CPU (half of one on a 1-CPU machine) so decode tasks run beside it, as the
    # local path decodes ahead of its forward; its torch threads use its node's share of the cores. Decode
    # tasks ask for half an actor's CPUs: two run beside each actor, and their remote args differ from the
    # actor's, which keeps Ray Data from fusing decode into the actor (fused, they would take turns).
    actor_cpus = 1.0 if cpus >= 2 else 0.5
    threads = max(1, int(cpus // max(1, actors)))
    return RayPlan(actors=actors, threads_per_actor=threads, actor_cpus=actor_cpus, decode_cpus=actor_cpus / 2,
                   gpus_per_actor=1.0 if gpus >= 1 else 0.0)


def _column_to_arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    flat = np.ascontiguousarray(values.reshape(len(values), -1))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _write_part(folder: Path, n: int, chunks: list[dict[str, np.ndarray]]) -> Path:
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    path = folder / f"part-{n:05d}.parquet"
    pq.write_table(pa.table({k: _column_to_arrow(v) for k, v in cols.items()}), path)
    return path


def run_on_ray(frame: pd.DataFrame, task: ImageTask, consume: Callable[[dict[str, np.ndarray]], None], *,
               image_size: int, config: RayConfig = RayConfig(), batch_size: int = 64,
               progress: Progress | None = None) -> dict[str, Any]:
    """Run ``task`` on every image of ``frame`` (columns ``image_id``, ``path`` and any the task reads) on
    Ray Data, handing each batch of result columns to ``consume`` as it comes back.

    Returns a summary (actors, threads, seconds to the first result and in all). Raises
    :class:`RayUnavailableError` when Ray cannot start, and the first worker error (e.g. an image that no
    longer decodes) as a :class:`RuntimeError` naming it.
    """
    if frame.empty:
        raise ValueError("no images to run on Ray")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    from core.data.imagefile import max_image_pixels

    progress = as_progress(progress)
    t0 = time.perf_counter()
    with ray_runtime(config) as ray:
        layout = plan(ray, config)
        rows = BLOCK_BATCHES * batch_size
        blocks = [frame.iloc[i:i + rows].reset_index(drop=True) for i in range(0, len(frame), rows)]
        ds = ray.data.from_pandas(blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs={"size": image_size, "max_pixels": max_image_pixels()},
                            batch_size=batch_size, batch_format="numpy", num_cpus=layout.decode_cpus)
        ds = ds.map_batches(TaskActor, fn_constructor_kwargs={"task": task,
                                                              "threads": layout.threads_per_actor,
                                                              "use_gpu": layout.gpus_per_actor > 0},
                            compute=ray.data.ActorPoolStrategy(size=layout.actors), batch_size=batch_size,
                            batch_format="numpy", num_cpus=layout.actor_cpus, num_gpus=layout.gpus_per_actor)
        done, first = 0, None
        progress.report(0.0, f"Ray: {layout.actors} actor(s) x {layout.threads_per_actor} threads", force=True)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                out = next(batches)
            except StopIteration:
                break
            except Exception as exc:  # a worker's error, wrapped by Ray: say what it was
                raise RuntimeError(f"the Ray run failed: {_root_cause(exc)}") from exc
            first = first if first is not None else time.perf_counter()
            consume(dict(out))
            done += len(out["image_id"])
            progress.report(done / len(frame), f"Ray: {done}/{len(frame)} images")  # may cancel the job
    if done != len(frame):
        raise RuntimeError(f"Ray returned {done} results for {len(frame)} images")
    end = time.perf_counter()
    return {"engine": "ray", "actors": layout.actors, "threads_per_actor": layout.threads_per_actor,
            "gpus_per_actor": layout.gpus_per_actor, "address": config.address or "local",
            "seconds_to_first_result": round((first or end) - t0, 3), "seconds": round(end - t0, 3)}


def map_images(frame: pd.DataFrame, task: ImageTask, *, image_size: int, staging: Path,
               config: RayConfig = RayConfig(), batch_size: int = 64,
               progress: Progress | None = None) -> tuple[list[Path], dict[str, Any]]:
    """:func:`run_on_ray` with the result columns written as Parquet parts of about :data:`PART_ROWS` rows
    into ``staging`` (for results too big to hold: a pool's vectors). Returns (the parts, the summary)."""
    staging.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    pending: list[dict[str, np.ndarray]] = []

    def consume(batch: dict[str, np.ndarray]) -> None:
        pending.append(batch)
        if sum(len(b["image_id"]) for b in pending) >= PART_ROWS:
            parts.append(_write_part(staging, len(parts), pending))
            pending.clear()

    summary = run_on_ray(frame, task, consume, image_size=image_size, config=config, batch_size=batch_size,
                         progress=progress)
    if pending:
        parts.append(_write_part(staging, len(parts), pending))
    return parts, summary


def map_images_to_arrays(frame: pd.DataFrame, task: ImageTask, *, image_size: int,
                         config: RayConfig = RayConfig(), batch_size: int = 64,
                         progress: Progress | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """:func:`run_on_ray` for results small enough to hold (predictions, attributions): the task's columns
    as arrays in ``frame``'s row order, and the run's summary."""
    batches: list[dict[str, np.ndarray]] = []
    summary = run_on_ray(frame, task, batches.append, image_size=image_size, config=config,
                         batch_size=batch_size, progress=progress)
    cols = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    ids, wanted = cols["image_id"], frame.image_id.to_numpy(np.int64)
    order = np.argsort(ids, kind="stable")
    rows = order[np.clip(np.searchsorted(ids[order], wanted), 0, len(ids) - 1)]
    if len(ids) != len(frame) or not np.array_equal(ids[rows], wanted):
        raise RuntimeError("Ray returned results for other images than the ones sent")
    return {k: v[rows] for k, v in cols.items()}, summary


_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception)): (.+)$")


def _root_cause(exc: BaseException) -> str:
    """The worker's own error, which Ray wraps in layers of its own exceptions and keeps only as the text of
    the worker's traceback: the last ``SomeError: message`` line there (else the innermost exception)."""
    chain, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = getattr(node, "cause", None) or node.__cause__ or node.__context__
    for e in chain:
        found = [m for line in str(e).splitlines() if (m := _ERROR_LINE.match(line))
                 and not m.group(1).startswith("ray.")]
        if found:
            return f"{found[-1].group(1).rsplit('.', 1)[-1]}: {found[-1].group(2)}"
    text = str(chain[-1]).strip().splitlines()
    return f"{type(chain[-1]).__name__}: {text[0] if text else ''}"
