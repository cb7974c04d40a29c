"""Make a debug-train selection: DCD retrieval for the error sample, or a baseline.

    python -m jobs.select --workspace DIR --method dcd [--embedder classifier] [--k 20] [--budget 500]
                          [--label-policy agree|weak|source] [--name NAME]
    python -m jobs.select --workspace DIR --method random --n 500
"""

from __future__ import annotations

import argparse

from core.embedding import EmbedderSpec
from core.pipeline import default_budget, default_k
from core.progress import Progress
from core.selection import (DEFAULT_LABEL_POLICY, LABEL_POLICIES, METHODS, select_all_pool, select_dcd,
                            select_error_sample, select_random)
from core.splits import split_counts
from core.workspace import Workspace
from jobs._common import parser, run_job


def build_parser() -> argparse.ArgumentParser:
    p = parser("Select a debug-train set from the pool.")
    p.add_argument("--method", choices=METHODS, default="dcd")
    p.add_argument("--embedder-id", default=None,
                   help="embedder whose vectors to search (default: the current classifier's own)")
    p.add_argument("--k", type=int, default=None, help="neighbours per error image (default: from budget)")
    p.add_argument("--budget", type=int, default=None, help="most images to select (default: 10 per error image)")
    p.add_argument("--label-policy", choices=LABEL_POLICIES, default=DEFAULT_LABEL_POLICY,
                   help=f"weak, source, or agree: only pool images whose weak label is the error image's "
                        f"(default {DEFAULT_LABEL_POLICY})")
    p.add_argument("--n", type=int, default=None, help="for --method random: how many (default: budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    counts = split_counts(ws)
    budget = args.budget or default_budget(counts["error_sample"], counts["pool"])
    if args.method == "dcd":
        embedder_id = args.embedder_id or EmbedderSpec().embedder_id(ws)
        sel = select_dcd(ws, embedder_id=embedder_id, k=args.k or default_k(budget, counts["error_sample"]),
                         budget=budget, label_policy=args.label_policy, name=args.name, progress=progress)
    elif args.method == "random":
        sel = select_random(ws, n=args.n or budget, seed=args.seed, name=args.name)
    elif args.method == "all_pool":
        sel = select_all_pool(ws, name=args.name)
    else:
        sel = select_error_sample(ws, name=args.name)
    out = {"selection_id": sel.selection_id, "name": sel.name, "method": sel.method, "n": len(sel.items)}
    if sel.index_info:
        out["index"] = {"type": sel.index_info.index_type, "recall_at_k": sel.index_info.recall_at_k}
    return out


def main(argv: list[str] | None = None) -> int:
    return run_job("select", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
