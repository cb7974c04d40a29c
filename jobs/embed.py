"""Embed the workspace's images with a frozen embedder and (re)build the pool's faiss index.

    python -m jobs.embed --workspace DIR [--embedder vit_small_patch16_224.dino --embedder-weights PATH]
                         [--splits error_sample,pool] [--only-missing]
"""

from __future__ import annotations

import argparse

from core.embedding import DEFAULT_EMBED_SPLITS, embed_split_images
from core.progress import Progress
from core.retrieval import pool_index
from core.workspace import Workspace
from jobs._common import add_embedder_args, embedder_spec, parser, run_job


def build_parser() -> argparse.ArgumentParser:
    p = parser("Embed images with a frozen embedder and build the pool index.")
    add_embedder_args(p)
    p.add_argument("--classifier-id", default=None, help="with --embedder classifier: which classifier")
    p.add_argument("--splits", default=",".join(DEFAULT_EMBED_SPLITS), help="comma-separated splits")
    p.add_argument("--only-missing", action="store_true", help="embed only images without a vector yet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-bf16", action="store_true", help="always run in fp32")
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    summary = embed_split_images(ws, embedder_spec(args), splits=splits, only_missing=args.only_missing,
                                 batch_size=args.batch_size, allow_bf16=not args.no_bf16,
                                 progress=progress.span(0, 0.9))
    if "pool" in splits:
        _, info = pool_index(ws, summary["embedder_id"], rebuild=True, progress=progress.span(0.9, 1.0))
        summary["index"] = {"type": info.index_type, "n": info.n, "recall_at_k": info.recall_at_k,
                            "build_seconds": round(info.build_seconds, 2)}
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("embed", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
