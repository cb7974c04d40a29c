"""Annotate the demo's slices from its ground truth, as a person would from the Attribution Mosaics.

    python -m jobs.annotate_demo --workspace DIR [--run-id ID] [--min-purity 0.6] [--json OUT]

The slice holding the most planted mislabeled images (label differs from true label): ``mislabeled``. Then
each slice of the run (default: the latest) whose members are mostly (``--min-purity``) from a planted
failure group (a minority group: ``landbird_on_water``, ``waterbird_on_land`` in the demo) and which holds
errors: ``spurious`` (the latest annotation is a slice's current one, so spurious wins on a slice that is both). Annotator: "ground-truth script". Only for benchmarks with ground truth; on real
data a person annotates on the Slices page.
"""

from __future__ import annotations

import argparse

from core.annotations import annotate
from core.progress import Progress
from core.slices import latest_run, slice_report
from core.workspace import Workspace
from jobs._common import parser, run_job

ANNOTATOR = "ground-truth script"


def failure_groups(ws: Workspace) -> set[str]:
    """Groups of the demo's error distribution (its error_sample / error_heldout), else the demo's minorities."""
    df = ws.df("SELECT DISTINCT group_name FROM images WHERE split IN ('error_sample', 'error_heldout') "
               "AND group_name IS NOT NULL")
    if len(df):
        return set(df.group_name)
    from core.demo_data import MINORITY_GROUPS

    return set(MINORITY_GROUPS)


def annotate_from_truth(ws: Workspace, run_id: str, *, min_purity: float = 0.6) -> list[dict]:
    report = slice_report(ws, run_id)
    if not any(r["group"] for r in report):
        raise ValueError("the workspace has no ground-truth groups; annotate on the Slices page instead")
    groups = failure_groups(ws)
    done = []
    # First the mislabeled slice, then the spurious ones: a slice that is both (mostly a failure group, with
    # the mislabeled images among its errors) keeps `spurious` as its current annotation, the main issue a
    # person sees in its mosaic; the mislabeled annotation stays listed.
    worst = max(report, key=lambda r: r["mislabeled"] or 0)
    if (worst["mislabeled"] or 0) > 0:
        annotate(ws, run_id, worst["slice_id"], "mislabeled", annotator=ANNOTATOR,
                 note=f"mosaic: {worst['mislabeled']} images whose label looks wrong")
        done.append({"slice_id": worst["slice_id"], "rank": worst["rank"], "kind": "mislabeled",
                     "group": worst["group"]})
    for r in report:
        if r["group"] in groups and (r["purity"] or 0) >= min_purity and (r["accuracy"] or 0) < 1.0:
            note = f"mosaic: {r['group']} ({r['purity']:.0%} of members), model fails on it"
            annotate(ws, run_id, r["slice_id"], "spurious", note=note, annotator=ANNOTATOR)
            done.append({"slice_id": r["slice_id"], "rank": r["rank"], "kind": "spurious", "group": r["group"]})
    return done


def build_parser() -> argparse.ArgumentParser:
    p = parser("Annotate the demo's slices from ground truth (simulates a person reading the mosaics).")
    p.add_argument("--run-id", default=None, help="slice run to annotate (default: the latest)")
    p.add_argument("--min-purity", type=float, default=0.6, help="share of a failure group to call a slice spurious")
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    run_id = args.run_id or latest_run(ws)
    if run_id is None:
        raise ValueError("no slice run in the workspace; run `python -m jobs.slices` first")
    done = annotate_from_truth(ws, run_id, min_purity=args.min_purity)
    for d in done:
        print(f"slice {d['slice_id']} (rank {d['rank']}, {d['group']}): {d['kind']}")
    return {"run_id": run_id, "annotations": done}


def main(argv: list[str] | None = None) -> int:
    return run_job("annotate_demo", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
