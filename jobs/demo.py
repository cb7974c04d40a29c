"""Generate a demo DCD scenario into a new workspace and run the whole loop on it.

    python -m jobs.demo --workspace DIR --json OUT.json                  # Waterbirds-like synthetic benchmark
    python -m jobs.demo --workspace DIR --dataset cifar10 [--assets ../shared/assets]   # real CIFAR-10 images
    python -m jobs.demo --workspace DIR --size small                     # quick version (make run)

Every pipeline flag (classifier, embedder, k, budget, epochs...) can be given; the defaults depend on the
dataset (see DEMO_DEFAULTS).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from core.datasets import ingest_manifest
from core.progress import Progress
from core.workspace import Workspace
from jobs._common import parser, run_job
from jobs.pipeline import add_pipeline_args, pipeline_config, print_table

DEFAULT_ASSETS = os.environ.get("DCD_ASSETS", str(Path(__file__).resolve().parents[2] / "shared" / "assets"))

# Per dataset and size: the pipeline flags a user did not give. Paths are relative to --assets.
DEMO_DEFAULTS: dict[str, dict[str, dict]] = {
    "waterbirds": {
        "full": {"classifier": "cifar_resnet20", "image_size": 32, "epochs": 30, "lr": 0.1, "finetune_epochs": 8},
        "small": {"classifier": "cifar_resnet20", "image_size": 32, "epochs": 20, "lr": 0.1, "finetune_epochs": 6},
    },
    "cifar10": {
        "full": {"classifier": "cifar_resnet20", "classifier_weights": "weights/cifar10-resnets/resnet20-12fca82f.th",
                 "embedder": "cifar_resnet56", "embedder_weights": "weights/cifar10-resnets/resnet56-4bfd9763.th",
                 "embedder_layers": "multiscale", "image_size": 32, "epochs": 8, "lr": 0.05},
        "small": {"classifier": "cifar_resnet20", "classifier_weights": "weights/cifar10-resnets/resnet20-12fca82f.th",
                  "embedder": "cifar_resnet56", "embedder_weights": "weights/cifar10-resnets/resnet56-4bfd9763.th",
                  "embedder_layers": "multiscale", "image_size": 32, "epochs": 6, "lr": 0.05},
    },
}
_PATH_KEYS = ("classifier_weights", "embedder_weights")


def build_parser() -> argparse.ArgumentParser:
    p = parser("Generate a demo DCD scenario into a new workspace and run the whole loop on it.")
    p.add_argument("--dataset", choices=sorted(DEMO_DEFAULTS), default="waterbirds")
    p.add_argument("--size", choices=("small", "full"), default="full")
    p.add_argument("--assets", type=Path, default=Path(DEFAULT_ASSETS),
                   help="folder of the shared real assets (CIFAR-10 images, weights); default ../shared/assets")
    p.add_argument("--data-dir", type=Path, default=None, help="where to write the images (default WORKSPACE/data)")
    p.add_argument("--corruption", default="fog", help="cifar10: the error distribution's corruption")
    p.add_argument("--no-pipeline", action="store_true", help="only generate and ingest the data")
    add_pipeline_args(p)
    # Unset here so that the dataset's defaults apply unless the user gives a value.
    p.set_defaults(**{k: None for k in ("classifier", "classifier_weights", "embedder", "embedder_weights",
                                        "embedder_layers", "image_size", "epochs", "lr")})
    return p


def apply_demo_defaults(args: argparse.Namespace) -> argparse.Namespace:
    from core.training import TrainConfig

    defaults = DEMO_DEFAULTS[args.dataset][args.size]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            if key in _PATH_KEYS:
                value = str(args.assets / value)
                if not Path(value).exists():
                    raise FileNotFoundError(f"the {args.dataset} demo needs {value}; pass --assets DIR")
            setattr(args, key, value)
    args.embedder = args.embedder or "classifier"
    args.embedder_layers = args.embedder_layers or "penultimate"
    args.epochs = args.epochs or TrainConfig().epochs
    args.lr = args.lr or TrainConfig().lr
    return args


def generate(args: argparse.Namespace, data_dir: Path) -> Path:
    if args.dataset == "waterbirds":
        from core.demo_data import generate_waterbirds_like

        return generate_waterbirds_like(data_dir, size=args.size, seed=args.seed, image_size=args.image_size)
    from core.cifar_scenario import build_cifar10_scenario

    if not (args.assets / "cifar10" / "cifar10-jpg.zip").exists():
        raise FileNotFoundError(f"no CIFAR-10 images under {args.assets}/cifar10; pass --assets DIR")
    return build_cifar10_scenario(data_dir, assets=args.assets, size=args.size, seed=args.seed,
                                  corruption=args.corruption)


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    from core.pipeline import run_pipeline

    if ws.scalar("SELECT count(*) FROM images"):
        raise ValueError(f"{ws.root} already holds images; the demo generates into a new workspace")
    args = apply_demo_defaults(args)
    data_dir = args.data_dir or ws.root / "data"
    progress.report(0.0, f"generating the {args.dataset} scenario", force=True)
    manifest = generate(args, data_dir)
    report = ingest_manifest(ws, manifest, progress=progress.span(0.02, 0.05))
    print(report.summary())
    if args.no_pipeline:
        return {"ingest": report.to_dict()}
    result = run_pipeline(ws, pipeline_config(args), progress=progress.span(0.05, 1.0))
    result["dataset"] = {"name": args.dataset, "size": args.size, "manifest": str(manifest)}
    print_table(result)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_job("demo", argv, build_parser, run, create_workspace=True)


if __name__ == "__main__":
    raise SystemExit(main())
