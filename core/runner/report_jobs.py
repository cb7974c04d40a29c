"""The report job: one slice and its fix as a self-contained HTML page for stakeholders (core.app.slice_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.progress import Progress
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option
from core.store.workspace import Workspace


def default_report_path(ws: Workspace, run_id: str, rank: int) -> Path:
    """Where a slice's report goes unless told: ``artifacts/reports/<run>-<rank>.html``."""
    from core.app.slice_report import report_filename

    return ws.artifact_dir("reports") / report_filename(run_id, rank)


def _report(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.app.slice_report import slice_report_data
    from core.app.slice_report_page import slice_report_html
    from core.dcd.slice_targets import parse_slice_ref

    run_id, rank = parse_slice_ref(opts.slice)
    progress.report(0.1, f"gathering slice {opts.slice}", force=True)
    data = slice_report_data(ws, run_id, rank)
    out = Path(opts.out).expanduser() if opts.out else default_report_path(ws, data.run_id, data.rank)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = slice_report_html(data)
    out.write_text(text, encoding="utf-8")
    progress.report(1.0, f"wrote {out}", force=True)
    return {"path": str(out.resolve()), "run_id": data.run_id, "rank": data.rank, "slice_id": data.slice_id,
            "n_fixes": len(data.fixes), "mosaic": data.mosaic_png is not None, "bytes": len(text.encode())}


REPORT = JobSpec(
"report", "Write one slice and its fix as a self-contained HTML page (mosaic, annotation, what was done, "
          "before/after on the slice's held-out part, test and the worst group).",
(Option("slice", default="latest:1", help="RUN:RANK, the slice to report on (rank 1 = the worst; RUN may be "
                                          "latest)"),
 Option("out", "path", help="the HTML file to write (default: artifacts/reports/<run>-<rank>.html in the "
                            "workspace)")),
_report)

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (REPORT,)
