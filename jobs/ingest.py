"""Ingest an image dataset into a workspace (creating the workspace if needed), validating every row.

    python -m jobs.ingest --workspace DIR --manifest data.csv [--classes cat,dog]
    python -m jobs.ingest --workspace DIR --imagefolder ROOT

Prints a summary (rows added per split, rejections per reason); the rejected rows are written as CSV under
``artifacts/ingest/``. Exits 1 when no row could be added.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.datasets import IngestReport, ingest_imagefolder, ingest_manifest
from core.progress import Progress
from core.workspace import Workspace
from jobs._common import parser, run_job


class NothingIngestedError(RuntimeError):
    """Every input row was rejected; the job fails so that nobody mistakes it for a success."""


def _class_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"--classes wants comma-separated class names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = parser("Ingest an image dataset (a CSV/Parquet manifest or an ImageFolder tree) into a workspace.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path,
                     help="CSV or Parquet with columns path,label,split[,weak_label][,group][,true_label]")
    src.add_argument("--imagefolder", type=Path, help="folder laid out as ROOT/<split>/<class>/<image>")
    p.add_argument("--classes", type=_class_list, default=None,
                   help="comma-separated class names, in class-id order (default: the workspace's classes, "
                        "else the sorted labels of the train split)")
    return p


def _failure_message(report: IngestReport) -> str:
    reasons = ", ".join(f"{reason}: {n}" for reason, n in report.rejections_by_reason().items())
    return (f"no row of {report.source} was added ({report.n_rows} rows, all rejected: {reasons or 'none'}). "
            f"See {report.rejections_path or 'the summary above'} for each row's reason.")


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    if args.manifest is not None:
        report = ingest_manifest(ws, args.manifest, classes=args.classes, progress=progress)
    else:
        report = ingest_imagefolder(ws, args.imagefolder, classes=args.classes, progress=progress)
    print(report.summary())
    if report.n_added == 0:
        raise NothingIngestedError(_failure_message(report))
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    return run_job("ingest", argv, build_parser, run, create_workspace=True)


if __name__ == "__main__":
    raise SystemExit(main())
