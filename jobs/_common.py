"""What every job CLI shares: the common flags and the wrapper that records the job in the job table.

A job module does three things: build its parser from :func:`parser`, define ``run(ws, args, progress)``
calling one ``core`` function, and end with ``raise SystemExit(main(...))``. :func:`run_job` records the
job (queued -> running -> succeeded/failed/cancelled), keeps a heartbeat, turns SIGTERM into a clean
cancellation, and writes the ``--json`` report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.jobstore import HEARTBEAT_SECONDS, JobStore
from core.progress import Progress
from core.workspace import Workspace, WorkspaceError

RunFn = Callable[[Workspace, argparse.Namespace, Progress], dict[str, Any] | None]


class JobCancelled(Exception):
    pass


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workspace", default=os.environ.get("DCD_WORKSPACE"),
                   help="workspace folder (default: $DCD_WORKSPACE)")
    p.add_argument("--json", type=Path, default=None, help="also write the job's result as JSON here")
    p.add_argument("--job-id", default=None, help=argparse.SUPPRESS)  # set by the app's launcher
    return p


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            store.update(job_id)
        except Exception:  # a missed heartbeat is not worth killing the job
            pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobCancelled("cancelled by request (SIGTERM)")


def run_job(kind: str, argv: list[str] | None, build: Callable[[], argparse.ArgumentParser], run: RunFn,
            *, create_workspace: bool = False) -> int:
    """Parse ``argv``, run ``run`` as a recorded job, and return the process exit code."""
    args = build().parse_args(argv)
    if not args.workspace:
        print(f"error: {kind} needs --workspace DIR (or the DCD_WORKSPACE environment variable)",
              file=sys.stderr)
        return 2
    try:
        ws = (Workspace.create(args.workspace, exist_ok=True) if create_workspace
              else Workspace.open(args.workspace))
    except WorkspaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    store = ws.jobs()
    store.init()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    job_id = args.job_id or store.create(kind, argv_list)
    store.start(job_id, os.getpid())
    signal.signal(signal.SIGTERM, _on_sigterm)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True).start()
    progress = Progress(lambda f, m: store.update(job_id, progress=f, message=m))
    try:
        result = run(ws, args, progress) or {}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, default=str))
        store.finish(job_id, "succeeded", result=result, message="done")
        return 0
    except (JobCancelled, KeyboardInterrupt) as exc:
        store.finish(job_id, "cancelled", error=str(exc) or "cancelled")
        print(f"{kind}: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:
        traceback.print_exc()
        store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()


# -- argument groups shared by several jobs ---------------------------------------------------------

def add_classifier_args(p: argparse.ArgumentParser) -> None:
    from core.pipeline import DEFAULT_CLASSIFIER, DEFAULT_IMAGE_SIZE

    g = p.add_argument_group("classifier")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help=f"timm architecture or cifar_resnet20/32/44/56 (default {DEFAULT_CLASSIFIER})")
    g.add_argument("--classifier-weights", default=None,
                   help="local checkpoint: a trained classifier, or backbone weights to fine-tune")
    g.add_argument("--classifier-id", default=None, help="use this classifier of the workspace as is")
    g.add_argument("--hub", action="store_true", help="download pretrained weights from timm's hub")
    g.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"input resolution for a classifier trained here (default {DEFAULT_IMAGE_SIZE})")


def add_embedder_args(p: argparse.ArgumentParser) -> None:
    from core.models import EMBEDDING_LAYERS

    g = p.add_argument_group("embedder")
    g.add_argument("--embedder", default="classifier",
                   help="timm architecture (e.g. vit_small_patch16_224.dino, resnet50), cifar_resnet56, or "
                        "'classifier' for the classifier's own penultimate layer (default)")
    g.add_argument("--embedder-weights", default=None, help="local weights file for the embedder")
    g.add_argument("--embedder-hub", action="store_true", help="download the embedder's weights from the hub")
    g.add_argument("--embedder-layers", choices=EMBEDDING_LAYERS, default="penultimate",
                   help="penultimate: the pooled last block (DCD's feature space); multiscale: mean and std "
                        "of the last 3 stages, which also finds low-level shifts such as blur, fog or noise")
    g.add_argument("--embedder-image-size", type=int, default=None, help="override the embedder's input size")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from core.training import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs to train the classifier ({d.epochs})")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="epochs to fine-tune on train + selection (default: half of --epochs, at least 3)")
    g.add_argument("--added-share", type=float, default=d.added_share,
                   help=f"share of every fine-tuning batch drawn from the added selection ({d.added_share}); "
                        f"0 samples train and selection alike")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--seed", type=int, default=d.seed)


def train_config(args: argparse.Namespace):
    from core.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       added_share=args.added_share or None)


def embedder_spec(args: argparse.Namespace):
    from core.embedding import EmbedderSpec

    return EmbedderSpec(arch=args.embedder, weights=args.embedder_weights, hub=args.embedder_hub,
                        image_size=args.embedder_image_size, layers=args.embedder_layers,
                        classifier_id=getattr(args, "classifier_id", None))
