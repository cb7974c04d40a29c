"""Embedding the workspace's images with a frozen embedder, streamed so any pool size fits.

An :class:`EmbedderSpec` names the feature space: a timm architecture (with a local weights file or the
hub), a CIFAR ResNet, or ``classifier`` (the penultimate layer of the current classifier). Images are
decoded in threads ahead of the forward pass, embedded in batches (bf16 when it matches fp32 on a
sample), staged to Parquet part files, then inserted from those files into the workspace in one
transaction (the vectors of the whole pool are never held in memory at once).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from core.data.images import iter_decoded, iter_model_inputs
from core.data.splits import images_df
from core.engines.ray_data import RayConfig, map_images
from core.models.catalog import (
    classifier_embedder_id,
    insert_model_row,
    load_classifier,
    require_classifier,
)
from core.models.device import on_device
from core.models.factory import create_model, default_data_config
from core.models.features import EMBEDDING_LAYERS, embedding_dim, embedding_function
from core.models.inference import choose_precision, run_model
from core.models.inference import embed as embed_pixels
from core.models.pretrained import DEFAULT_BACKBONE, is_backbone_name
from core.models.tasks import EmbedTask
from core.progress import Progress, as_progress
from core.store.vectors import store_embedding_files, vectors_to_arrow
from core.store.workspace import Workspace

DEFAULT_EMBED_SPLITS = ("error_sample", "pool", "error_heldout", "test", "train")
PART_ROWS = 8192  # images per staged Parquet part


@dataclass(frozen=True)
class EmbedderSpec:
    """Which feature space to embed in: a pretrained backbone (default), any timm architecture with weights,
    or ``arch='classifier'``: the current classifier's own penultimate layer."""

    arch: str = DEFAULT_BACKBONE
    weights: str | None = None
    hub: bool = False
    image_size: int | None = None
    classifier_id: str | None = None
    layers: str = "penultimate"  # or "multiscale": see core.models.EMBEDDING_LAYERS

    def __post_init__(self) -> None:
        if self.layers not in EMBEDDING_LAYERS:
            raise ValueError(f"embedder layers must be one of {EMBEDDING_LAYERS}, got {self.layers!r}")

    def classifier_model_id(self, ws: Workspace) -> str:
        return require_classifier(ws, self.classifier_id, purpose="embed with (embedder 'classifier')")

    def embedder_id(self, ws: Workspace) -> str:
        suffix = "" if self.layers == "penultimate" else f"+{self.layers}"
        if self.arch == "classifier":
            return classifier_embedder_id(self.classifier_model_id(ws)) + suffix
        return self._model_embedder_id() + suffix

    def _model_embedder_id(self) -> str:
        tag = "hub" if self.hub else (Path(self.weights).stem if self.weights else
                                      "packaged" if is_backbone_name(self.arch) else "random")
        if self.weights:
            tag += "-" + hashlib.sha1(str(Path(self.weights).resolve()).encode()).hexdigest()[:6]
        size = f"@{self.image_size}" if self.image_size else ""
        return f"{self.arch}:{tag}{size}"


def default_search_embedder(ws: Workspace) -> str:
    """The embedder a DCD search uses when none is named: the default embedder if it has vectors here, else
    the one embedded most recently; a :class:`ValueError` saying what to run if there is none."""
    from core.store.vectors import list_embedders

    known = list_embedders(ws)
    default = EmbedderSpec().embedder_id(ws)
    if default in known:
        return default
    if not known:
        raise ValueError(f"the workspace has no embeddings yet; run `python -m jobs.embed --workspace {ws.root}` "
                         f"first (default embedder: {EmbedderSpec().arch})")
    return known[-1]


def spec_of_embedder(ws: Workspace, embedder_id: str) -> EmbedderSpec:
    """The :class:`EmbedderSpec` that embeds into ``embedder_id``'s space (to embed images it lacks)."""
    from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, get_model, split_embedder_id

    base, layers = split_embedder_id(embedder_id)
    if base.startswith(CLASSIFIER_EMBEDDER_PREFIX):
        spec = EmbedderSpec(arch="classifier", classifier_id=base[len(CLASSIFIER_EMBEDDER_PREFIX):], layers=layers)
    else:
        try:  # an embedder's record is under its full id (layers suffix included), older ones under the base
            rec = get_model(ws, embedder_id)
        except KeyError:
            rec = get_model(ws, base)
        size = base.rpartition("@")[2] if "@" in base else ""
        spec = EmbedderSpec(arch=rec.arch, weights=rec.config.get("weights"), hub=bool(rec.config.get("hub")),
                            image_size=int(size) if size.isdigit() else None, layers=layers)
    if spec.embedder_id(ws) != embedder_id:
        raise ValueError(f"cannot rebuild embedder {embedder_id!r} from its record (it rebuilds as "
                         f"{spec.embedder_id(ws)!r}); embed with `python -m jobs.embed` and name it explicitly")
    return spec


def embed_missing(ws: Workspace, embedder_id: str, image_ids: Sequence[int], *,
                  progress: Progress | None = None) -> int:
    """Embed those of ``image_ids`` that ``embedder_id`` has no vector for yet (e.g. a slice's members, to
    search with); returns how many were embedded."""
    from core.constants import SPLITS
    from core.store.vectors import embedding_table

    found = embedding_table(ws, embedder_id)
    have = set(ws.df(f"SELECT image_id FROM {found[0]}").image_id) if found else set()
    missing = sorted(set(int(i) for i in image_ids) - have)
    if not missing:
        return 0
    print(f"embedding {len(missing)} image(s) that {embedder_id} has no vector for", flush=True)
    spec = spec_of_embedder(ws, embedder_id) if found else EmbedderSpec()
    return int(embed_split_images(ws, spec, splits=SPLITS, image_ids=missing, only_missing=True,
                                  progress=progress)["n_embedded"])


def search_embedder(ws: Workspace, *, progress: Progress | None = None) -> str:
    """:func:`default_search_embedder`, or, in a workspace with no embeddings at all, the default embedder
    after embedding the pool with it (so that a DCD search needs no earlier step)."""
    from core.store.vectors import list_embedders

    if list_embedders(ws):
        return default_search_embedder(ws)
    print(f"no embeddings yet: embedding the pool with the default embedder ({EmbedderSpec().arch})", flush=True)
    return str(embed_split_images(ws, EmbedderSpec(), splits=("pool",), progress=progress)["embedder_id"])


def build_embedder(ws: Workspace, spec: EmbedderSpec):
    """(model, data config, embedder id, its model record or None): a record for embedders that are not a
    classifier's own layers, for the caller to store with the vectors (:func:`core.models.catalog.insert_model_row`)."""
    embedder_id = spec.embedder_id(ws)
    if spec.arch == "classifier":
        model, cfg = load_classifier(ws, spec.classifier_model_id(ws))
        return model, cfg, embedder_id, None
    if spec.weights is None and not spec.hub and not is_backbone_name(spec.arch):
        print(f"warning: embedder {spec.arch} has no weights (random init); give --embedder-weights PATH "
              f"for a meaningful feature space", flush=True)
    model = create_model(spec.arch, num_classes=0, weights=spec.weights, hub=spec.hub).eval()
    cfg = default_data_config(model, spec.image_size)
    record = dict(model_id=embedder_id, role="embedder", arch=spec.arch,
                  embed_dim=embedding_dim(model, spec.layers, cfg.image_size),
                  config={"weights": spec.weights, "hub": spec.hub, "layers": spec.layers,
                          "data_config": cfg.to_dict()})
    return model, cfg, embedder_id, record


def embed_split_images(ws: Workspace, spec: EmbedderSpec, *, splits: Sequence[str] = DEFAULT_EMBED_SPLITS,
                       only_missing: bool = False, batch_size: int = 128, allow_bf16: bool = True,
                       ray: RayConfig | None = None, image_ids: Sequence[int] | None = None,
                       progress: Progress | None = None) -> dict:
    """Embed the images of ``splits`` (only ``image_ids`` among them, if given) and store the vectors;
    returns a summary dict.

    With ``ray``, the images are decoded and embedded on Ray Data (core.engines.ray_data) instead of in this
    process; the precision check, the staging and the store are the same.
    """
    progress = as_progress(progress)
    t0, c0 = time.perf_counter(), time.process_time()
    model, cfg, embedder_id, record = build_embedder(ws, spec)
    df = images_df(ws, list(splits))
    if image_ids is not None:
        df = df[df.image_id.isin([int(i) for i in image_ids])]
    if only_missing:
        from core.store.vectors import embedding_table

        found = embedding_table(ws, embedder_id)
        if found:
            have = set(ws.df(f"SELECT image_id FROM {found[0]}").image_id)
            df = df[~df.image_id.isin(have)]
    if df.empty:
        return {"embedder_id": embedder_id, "n_embedded": 0}
    paths = df.path.tolist()
    # Locally, the precision check's sample is the decode stream's first batches, kept for the embedding:
    # they are not decoded twice, and the stream decodes on during the check, so the forward starts at once.
    stream = iter_model_inputs(paths, cfg, chunk=batch_size) if ray is None else None
    head = list(islice(stream, -(-min(128, len(paths)) // batch_size))) if stream is not None else []
    sample = torch.cat(head)[:128] if head else next(iter_decoded(paths[:128], cfg.image_size, chunk=128))
    embed_fn = embedding_function(model, spec.layers)
    dim = embedding_dim(model, spec.layers, cfg.image_size)
    check = choose_precision(model, sample, cfg, embedding=True, allow_bf16=allow_bf16, embed_fn=embed_fn)
    del sample
    print(f"embedder {embedder_id}: {'bf16' if check.bf16 else 'fp32'} ({check.reason})", flush=True)
    t_embed, c_embed = time.perf_counter(), time.process_time()

    # A staging folder of this run alone: two embed jobs never share (or delete) each other's parts.
    staging = ws.artifact_dir("staging", f"{hashlib.sha1(embedder_id.encode()).hexdigest()[:10]}-{os.getpid()}-"
                                         f"{uuid.uuid4().hex[:6]}")
    ids = df.image_id.to_numpy(np.int64)
    del df
    engine: dict = {"engine": "local"}
    try:
        if stream is not None:
            with on_device(model):
                parts = _embed_local(paths, ids, embed_fn, cfg, staging, batch_size=batch_size, bf16=check.bf16,
                                     progress=progress, head=head, stream=stream)
        else:
            frame = pd.DataFrame({"image_id": ids, "path": paths})
            task = EmbedTask(model, cfg, layers=spec.layers, bf16=check.bf16)
            parts, engine = map_images(frame, task, image_size=cfg.image_size, staging=staging, config=ray,
                                       batch_size=batch_size, progress=progress.span(0, 0.95))
        t_store, c_store = time.perf_counter(), time.process_time()
        store_embedding_files(ws, embedder_id, parts, dim=dim,
                              also=(lambda con: insert_model_row(con, **record)) if record else None)
    finally:
        if stream is not None:
            stream.close()
        shutil.rmtree(staging, ignore_errors=True)
    t_end, c_end = time.perf_counter(), time.process_time()
    progress.report(1.0, f"embedded {len(ids)} images", force=True)
    return {"embedder_id": embedder_id, "n_embedded": int(len(ids)), "precision": "bf16" if check.bf16 else
            "fp32", "precision_check": check.reason, "dim": dim, **engine,
            "seconds": {"setup": round(t_embed - t0, 3), "embed": round(t_store - t_embed, 3),
                        "store": round(t_end - t_store, 3)},
            "cpu_seconds": {"setup": round(c_embed - c0, 3), "embed": round(c_store - c_embed, 3),
                            "store": round(c_end - c_store, 3)}}


def _embed_local(paths: list[str], ids: np.ndarray, embed_fn, cfg, staging: Path, *, batch_size: int,
                 bf16: bool, progress: Progress, head: list[torch.Tensor],
                 stream: Iterator[torch.Tensor]) -> list[Path]:
    """Embed in this process: one decode stream for all images (``head``: its batches taken already; it
    decodes, resizes and normalises ahead across part boundaries; the caller closes it), a Parquet part per
    ``chunk_rows`` images, so memory holds one part of vectors, never the whole pool's."""
    batches_per_part = max(1, PART_ROWS // batch_size)
    chunk_rows = batches_per_part * batch_size
    decoded = chain(_drain(head), stream)
    parts = []
    for n_chunk, start in enumerate(range(0, len(paths), chunk_rows)):
        n_sub = min(chunk_rows, len(paths) - start)
        span = progress.span(start / len(paths) * 0.95, min(1.0, (start + n_sub) / len(paths)) * 0.95)
        vecs = run_model(embed_fn, islice(decoded, batches_per_part), n_sub, cfg, bf16=bf16, progress=span,
                         desc="embed")
        part = staging / f"part-{n_chunk:05d}.parquet"
        pq.write_table(vectors_to_arrow(ids[start:start + n_sub], vecs), part)
        parts.append(part)
    return parts


def _drain(items: list) -> Iterator:
    """The items of ``items``, each dropped from the list as it is yielded (its memory freed once used)."""
    while items:
        yield items.pop(0)


__all__ = ["EmbedderSpec", "build_embedder", "default_search_embedder", "embed_split_images", "embed_pixels"]
