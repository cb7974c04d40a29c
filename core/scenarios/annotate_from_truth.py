"""Annotating a benchmark's slices from its ground truth, as a person would from the Attribution Mosaics.

Only for benchmarks with planted truth (the demos); on real data a person annotates on the Slices page.
The slice holding the most planted mislabeled images (label differs from true label) is annotated
``mislabeled``; then each slice whose members are mostly (``min_purity``) from a planted failure group and
which holds errors is annotated ``spurious``. A slice that is both carries both findings
(core.scanner.annotations), and mitigation applies each.
"""

from __future__ import annotations

from core.scanner.annotations import annotate
from core.scanner.runs import slice_report
from core.store.workspace import Workspace

ANNOTATOR = "ground-truth script"


def failure_groups(ws: Workspace) -> set[str]:
    """Groups of the benchmark's error distribution (its error_sample / error_heldout), else the Waterbirds-like
    demo's minority groups."""
    df = ws.df("SELECT DISTINCT group_name FROM images WHERE split IN ('error_sample', 'error_heldout') "
               "AND group_name IS NOT NULL")
    if len(df):
        return set(df.group_name)
    from core.scenarios.waterbirds_like import MINORITY_GROUPS

    return set(MINORITY_GROUPS)


def annotate_from_truth(ws: Workspace, run_id: str, *, min_purity: float = 0.6) -> list[dict]:
    """Annotate the slices of ``run_id``; returns one dict per annotation (slice_id, rank, kind, group)."""
    report = slice_report(ws, run_id)
    if not any(r["group"] for r in report):
        raise ValueError("the workspace has no ground-truth groups; annotate on the Slices page instead")
    groups = failure_groups(ws)
    done = []
    # First the mislabeled slice, then the spurious ones: a slice that is both (mostly a failure group, with
    # the mislabeled images among its errors) carries both findings.
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
