"""What a finished job did, in a sentence, and the page to look at next (instead of its JSON result).

:func:`summarize` is pure: a job's kind and result, the names of the workspace's models and selections, and
for the models a job made, the before/after sentence of :func:`core.app.story.tell` (``stories``).
:func:`job_summary` reads those from the workspace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.store.workspace import Workspace

#: Pages a summary can point to (the app maps them to its page files).
PAGES = ("overview", "errors", "slices", "retrieval", "compare", "jobs")


@dataclass(frozen=True)
class JobSummary:
    """``text``: what the job did (Markdown, one or a few sentences); ``page``: one of :data:`PAGES` to see the
    result on, with ``link`` the words of the link; ``model_ids``: the classifiers it made."""

    text: str
    page: str | None = None
    link: str = ""
    model_ids: tuple[str, ...] = ()


def duration_text(seconds: float | None) -> str:
    """'16:20' (minutes:seconds), '1h05' past an hour, '–' when unknown: how the app shows a job's time."""
    if seconds is None or seconds != seconds:  # None or NaN
        return "–"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}h{m % 60:02d}"


#: Jobs whose end brings a fix to compare (a fine-tuned classifier, evaluated).
FIX_JOBS = ("demo", "pipeline", "retrain")


def time_left(job) -> float | None:
    """Seconds a running job should still take, from its own progress so far (None before it has any)."""
    elapsed, done = job.elapsed, float(job.progress or 0.0)
    if elapsed is None or done <= 0.02 or done >= 1.0:
        return None
    return elapsed * (1.0 - done) / done


#: Jobs whose end changes what a page shows (beside the fixes): new slices, new candidates to review (and a
#: new failure to search for).
SLICE_JOBS = ("slices", "attribute", "pipeline", "demo")
RETRIEVAL_JOBS = ("select", "embed", "label_issues", "pipeline", "demo", "failure")


def jobs_running(ws: Workspace, kinds: tuple[str, ...]) -> list:
    """The running or queued jobs of ``kinds``, oldest first."""
    if not ws.jobs_path.exists():
        return []
    return sorted((j for j in ws.jobs().list(active_only=True) if j.kind in kinds), key=lambda j: j.created_at)


def fix_jobs_running(ws: Workspace) -> list:
    """The running or queued jobs that will bring a fix (:data:`FIX_JOBS`), oldest first."""
    return jobs_running(ws, FIX_JOBS)


def made_models(result: Mapping[str, Any] | None) -> list[str]:
    """The classifiers a job's result names as made by it (retrain, pipeline, demo, train), in its order."""
    result = result or {}
    methods = result.get("methods") or {}
    ids = [m.get("model_id") for m in methods.values() if isinstance(m, Mapping)]
    if not ids and "model_id" in result and ("test_acc" in result or "error_heldout_acc" in result):
        ids = [result["model_id"]]  # train
    return [i for i in ids if isinstance(i, str)]


def summarize(kind: str, result: Mapping[str, Any] | None, *, models: Mapping[str, str] | None = None,
              selections: Mapping[str, str] | None = None, stories: Mapping[str, str] | None = None) -> JobSummary:
    """A finished job's :class:`JobSummary`. ``models`` / ``selections`` map ids to names; ``stories`` maps
    each model the job made to its before/after sentence (models without one get none)."""
    result, models, selections, stories = result or {}, models or {}, selections or {}, stories or {}
    name = lambda m: models.get(m, m)  # noqa: E731
    made = made_models(result)
    if made:
        told = [stories[m] for m in made if m in stories]
        text = f"Made {', '.join(f'**{name(m)}**' for m in made)}."
        if told:
            text += "\n\n" + "\n".join(f"- {t}" for t in told)
        page, link = ("compare", "Compare them on Before / after") if len(made) > 1 or told else \
            ("overview", "See it on the Overview")
        return JobSummary(text, page, link, tuple(made))
    if kind == "embed":
        index = result.get("index") or {}
        text = f"Embedded {result.get('n_embedded', 0):,} images ({result.get('dim', '?')}-d vectors)"
        if index:
            text += (f"; the pool index ({index.get('type')}) holds {index.get('n', 0):,} images, recall "
                     f"{index.get('recall_at_k', 0):.2f} against exact search")
        return JobSummary(text + ".", "retrieval", "Find debug-train candidates on Retrieval")
    if kind == "select":
        sel = result.get("selection_id")
        return JobSummary(f"Selected **{selections.get(sel, result.get('name', sel))}**: {result.get('n', 0):,} "
                          f"images.", "retrieval", "Review it on Retrieval")
    if kind == "predict":
        return JobSummary(f"Predicted {result.get('n_predicted', 0):,} images with **{name(result.get('model_id'))}**.",
                          "errors", "See its errors")
    if kind == "evaluate":
        ids = list((result.get("models") or {}).keys())
        return JobSummary(f"Evaluated {', '.join(f'**{name(m)}**' for m in ids)}.", "compare",
                          "Compare on Before / after")
    if kind in ("slices", "attribute", "annotate_demo"):
        what = {"slices": f"Found {result.get('n_slices', result.get('k', '?'))} slices of {result.get('n_images', 0):,} images",
                "attribute": f"Attributed {result.get('n', 0):,} images with {result.get('method', 'Grad-CAM')}",
                "annotate_demo": "Annotated the slices from the planted truth"}[kind]
        return JobSummary(what + ".", "slices", "See the slices")
    if kind == "ingest" or "ingest" in result:
        report = result.get("ingest", result)
        meta, n_bad = report.get("metadata") or {}, int(report.get("n_bad_values") or 0)
        kept = (f" Metadata kept: {', '.join(meta)}" + (f" ({n_bad:,} bad value{'s' if n_bad > 1 else ''}, "
                                                        f"listed in the job's log)" if n_bad else "") + ".") if meta else ""
        return JobSummary(f"Added {report.get('n_added', 0):,} images ({report.get('n_rejected', 0):,} rejected)."
                          + kept, "overview", "See the dataset on the Overview")
    return JobSummary("Finished.", None)


def job_summary(ws: Workspace, kind: str, result: Mapping[str, Any] | None) -> JobSummary:
    """:func:`summarize` with names and before/after sentences read from the workspace."""
    from core.app import names
    from core.app.before_after import model_story

    models = names.model_names(ws)
    stories = {}
    for m in made_models(result):
        if m in models:
            sentence = model_story(ws, m)
            if sentence:
                stories[m] = sentence
    return summarize(kind, result, models=models, selections=names.selection_names(ws), stories=stories)
