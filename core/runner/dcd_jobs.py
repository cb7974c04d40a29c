"""The DCD loop's jobs: ingest, train, embed, predict, select, retrain, evaluate, and the whole pipeline.

Each job is a :class:`~core.runner.jobspec.JobSpec`: its options and a ``run`` that takes the job's typed
options, calls core and returns a JSON-ready result. ``python -m jobs.<name>`` runs it from the command line; the app's Jobs page
launches the same command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.progress import Progress
from core.runner.configs import embedder_spec, pipeline_config, ray_config, train_overrides
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import (
    Option,
    classifier_options,
    embedder_options,
    engine_options,
    failure_option,
    index_options,
    selection_options,
    train_options,
)
from core.store.workspace import Workspace

EVALUATED_SPLITS = ["train", "test", "error_sample", "error_heldout"]


class NothingIngestedError(RuntimeError):
    """Every input row was rejected; the job fails so that nobody mistakes it for a success."""


# -- ingest -------------------------------------------------------------------------------------------

def _ingest(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.data.ingest import ingest_imagefolder, ingest_manifest

    shared = {"classes": opts.classes, "progress": progress, "max_pixels": opts.max_pixels,
              "allow_outside": opts.allow_outside}
    if opts.manifest is not None:
        report = ingest_manifest(ws, Path(opts.manifest), **shared)
    else:
        report = ingest_imagefolder(ws, Path(opts.imagefolder), **shared)
    print(report.summary())
    if report.n_added == 0 and report.n_existing == 0:  # re-ingesting the same input is not a failure
        reasons = ", ".join(f"{reason}: {n}" for reason, n in report.rejections_by_reason().items())
        raise NothingIngestedError(
            f"no row of {report.source} was added ({report.n_rows} rows, all rejected: {reasons or 'none'}). "
            f"See {report.rejections_path or 'the summary above'} for each row's reason.")
    return report.to_dict()


def _ingest_options() -> tuple[Option, ...]:
    from core.data.imagefile import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    return (
        Option("manifest", "path", help="CSV or Parquet with columns path,label,split[,weak_label][,group]"
                                        "[,true_label]; any encoding and separator Excel writes"),
        Option("imagefolder", "path", help="folder laid out as ROOT/<split>/<class>/<image>; under ROOT/pool/ the "
                                           "class folder is the weak label"),
        Option("classes", "list", help="class names in class-id order (default: the workspace's classes, else the "
                                       "sorted labels of the train split, numerically if all are integers)"),
        Option("max_pixels", "int", advanced=True,
               help=f"refuse images with more pixels than this, as too_large (default ${MAX_PIXELS_ENV}, else "
                    f"{MAX_IMAGE_PIXELS}); for this ingest only: set ${MAX_PIXELS_ENV} to let training and "
                    f"embedding decode them too"),
        Option("allow_outside", "flag", False, advanced=True,
               help="accept files outside the manifest's folder (ImageFolder root): absolute paths elsewhere, "
                    "../ that leaves it, symlinks out of it (default: rejected as outside_root)"),
    )


INGEST = JobSpec(
"ingest", "Ingest an image dataset (a CSV/Parquet manifest or an ImageFolder tree) into a workspace.",
_ingest_options(), _ingest, one_of=(("manifest", "imagefolder"),), creates_workspace=True)


# -- train, predict, evaluate ---------------------------------------------------------------------------

def _train(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.models.evaluation import evaluate, metrics_summary
    from core.models.schedules import initial_schedule
    from core.models.training import train_classifier

    schedule = initial_schedule(opts.classifier, weights=opts.classifier_weights, hub=opts.hub,
                                overrides=train_overrides(opts))
    model_id = train_classifier(ws, arch=opts.classifier, weights=opts.classifier_weights, hub=opts.hub,
                                image_size=opts.image_size, config=schedule, progress=progress.span(0, 0.9))
    metrics = evaluate(ws, model_id, progress=progress.span(0.9, 1.0))
    return {"model_id": model_id, **metrics_summary(metrics)}


_TRAIN_CLASSIFIER = tuple(o for o in classifier_options() if o.name != "classifier_id")
TRAIN = JobSpec("train", "Train the classifier under debug on the train split (it becomes the current one).",
                _TRAIN_CLASSIFIER + train_options(), _train)


def _predict(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.models.catalog import require_classifier
    from core.models.evaluation import predict

    model_id = require_classifier(ws, opts.classifier_id, purpose="predict with")
    df = predict(ws, model_id, splits=opts.splits, allow_bf16=not opts.no_bf16, ray=ray_config(opts),
                 progress=progress)
    return {"model_id": model_id, "n_predicted": len(df), "engine": opts.engine}


PREDICT = JobSpec(
 "predict", "Predict with a classifier and store the predictions.",
 (Option("classifier_id", picker="classifier", aliases=("--model-id",),
         help="classifier (default: the current one)"),
  Option("splits", "list", EVALUATED_SPLITS, choices=("train", "test", "error_sample", "error_heldout", "pool"),
         help="splits to predict"),
  Option("no_bf16", "flag", False, advanced=True, help="always run in fp32"))
 + engine_options(),
 _predict)


def _evaluate(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.models.catalog import list_models
    from core.models.evaluation import evaluate, metrics_summary

    ids = opts.classifier_id or list_models(ws, "classifier").model_id.tolist()
    if not ids:
        raise ValueError("the workspace has no classifier to evaluate; run jobs.train first")
    out, ray = {}, ray_config(opts)
    for i, model_id in enumerate(ids):
        out[model_id] = metrics_summary(evaluate(ws, model_id, ray=ray,
                                                 progress=progress.span(i / len(ids), (i + 1) / len(ids))))
    return {"models": out}


EVALUATE = JobSpec(
  "evaluate", "Evaluate classifiers on test, error_heldout and every group.",
  (Option("classifier_id", "list", picker="classifier", aliases=("--model-id",),
          help="classifiers to evaluate (default: all)"),) + engine_options(),
  _evaluate)


# -- embed, select ---------------------------------------------------------------------------------------

def _embed(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.dcd.embed import embed_split_images
    from core.dcd.index import pool_index

    summary = embed_split_images(ws, embedder_spec(opts), splits=opts.splits, only_missing=opts.only_missing,
                                 batch_size=opts.batch_size, allow_bf16=not opts.no_bf16, ray=ray_config(opts),
                                 progress=progress.span(0, 0.9))
    if "pool" in opts.splits:
        _, info = pool_index(ws, summary["embedder_id"], rebuild=True, memory_gb=opts.index_memory_gb,
                             progress=progress.span(0.9, 1.0))
        summary["index"] = {"type": info.index_type, "n": info.n, "recall_at_k": info.recall_at_k,
                            "build_seconds": round(info.build_seconds, 2), "memory_gb": info.memory_gb}
    return summary


def _embed_options() -> tuple[Option, ...]:
    from core.constants import SPLITS
    from core.dcd.embed import DEFAULT_EMBED_SPLITS

    return embedder_options() + (
        Option("classifier_id", picker="classifier", group="embedder",
               help="with --embedder classifier: which classifier (default: the current one)"),
        Option("splits", "list", list(DEFAULT_EMBED_SPLITS), choices=SPLITS, help="splits to embed"),
        Option("only_missing", "flag", False, help="embed only images without a vector yet"),
        Option("batch_size", "int", 128, advanced=True),
        Option("no_bf16", "flag", False, advanced=True, help="always run in fp32")) + engine_options() + index_options()


EMBED = JobSpec("embed", "Embed images with a frozen embedder and build the pool index.", _embed_options(),
                _embed)


def _select(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.dcd.strategies import SelectionRequest, select

    request = SelectionRequest(budget=opts.budget, neighbours=opts.neighbours, embedder_id=opts.embedder_id,
                               label_policy=opts.label_policy, seed=opts.seed, name=opts.name,
                               index_memory_gb=opts.index_memory_gb, from_slice=opts.from_slice,
                               failure=opts.failure, heldout_share=opts.heldout_share,
                               label_issues="drop" if opts.drop_label_issues else opts.label_issues)
    target = request.target(ws)
    if target is not None:
        print(f"{target.name}: {len(target.query_ids)} images to search with, {len(target.heldout_ids)} held out "
              f"as eval set {target.eval_set}", flush=True)
    if opts.method in ("dcd", "random"):
        print(request.size(ws, target).note, flush=True)
    sel = select(ws, opts.method, request, progress=progress)
    out = {"selection_id": sel.selection_id, "name": sel.name, "method": sel.method, "n": len(sel.items)}
    out.update(request.recorded(ws, target))
    if sel.index_info:
        out["index"] = {"type": sel.index_info.index_type, "recall_at_k": sel.index_info.recall_at_k}
    return out


def _select_options() -> tuple[Option, ...]:
    from core.dcd.strategies import METHODS

    budget = next(o for o in selection_options() if o.name == "budget")
    return (
        Option("method", "choice", "dcd", choices=METHODS, help="how to choose the debug-train set (dcd)"),
        Option("embedder_id", picker="embedder",
               help="embedder whose vectors to search (default: the pretrained backbone's if embedded, else "
                    "the most recently embedded)"),
        *(o for o in selection_options() if o.name != "budget"),
        Option("budget", "int", aliases=("--n",), group="selection",
               help=budget.help + "; for random: how many"),
        Option("seed", "int", 0, advanced=True, help="seed of the random baseline's draw"),
        Option("name", help="name of the selection (default: from method and sizes)"),
        Option("from_slice", help="RUN:RANK: retrieve for that slice's misclassified members instead of the "
                                  "error_sample split (rank 1 = the worst; RUN may be latest); part of them is "
                                  "held out as the eval set slice:RUN:RANK"),
        failure_option(),
        Option("heldout_share", "float", 0.5, advanced=True,
               help="with --from-slice (or a slice as --failure): share of the slice's misclassified members held "
                    "out (seeded by --seed)"),
        Option("drop_label_issues", "flag", False, advanced=True, help="the old spelling of --label-issues drop"),
        *index_options(),
    )


SELECT = JobSpec("select", "Select a debug-train set from the pool: DCD retrieval for the error sample, or a "
                           "baseline.", _select_options(), _select)


# -- retrain -----------------------------------------------------------------------------------------------

def _retrain_corm(ws: Workspace, opts: JobOptions, base: str, progress: Progress) -> dict[str, Any]:
    """CoRM from the slice annotations: by default plain fine-tuning against a grid of CoRM settings, the
    better on held-out slice members kept (core.scanner.mitigation_choice); ``--corm-choice off``: the given
    setting alone, as it is."""
    from core.models.evaluation import compute_metrics, evaluate, metrics_summary
    from core.models.schedules import finetune_schedule
    from core.scanner.mitigation import CormConfig, corm_retrain
    from core.scanner.mitigation_choice import ChoiceConfig, choose_mitigation

    if opts.selection_id:
        raise ValueError("--mitigate corm fine-tunes on train only; leave out --selection-id")
    config = CormConfig(lam=opts.corm_lambda, sigma=opts.corm_sigma, mask_threshold=opts.mask_threshold,
                        propagate=opts.propagate, propagate_threshold=opts.propagate_threshold,
                        mislabeled=opts.mislabeled, epochs=opts.finetune_epochs)
    train_config = finetune_schedule(ws, base, train_overrides(opts))
    try:
        compute_metrics(ws, base)
    except ValueError:
        evaluate(ws, base, ray=ray_config(opts), progress=progress.span(0, 0.05))
    if opts.corm_choice == "off":
        model_id, summary = corm_retrain(ws, base_model_id=base, run_id=opts.run_id, config=config,
                                         train_config=train_config, progress=progress.span(0.05, 0.9))
        kept, out = "corm", {"corm": summary}
    else:
        choice = ChoiceConfig(grid=opts.corm_choice, heldout_share=opts.heldout_share, seed=opts.seed)
        model_id, record = choose_mitigation(ws, base_model_id=base, run_id=opts.run_id, config=config,
                                             train_config=train_config, choice=choice,
                                             progress=progress.span(0.05, 0.9))
        print(record["reason"], flush=True)
        kept = ws.scalar("SELECT method FROM models WHERE model_id = ?", [model_id])
        out = {"mitigation": {k: record[k] for k in ("chosen", "reason", "candidates", "findings",
                                                     "heldout_eval_sets", "heldout_sizes")}}
    before = compute_metrics(ws, base)  # again: the base is measured on the new held-out eval sets too
    after = evaluate(ws, model_id, ray=ray_config(opts), progress=progress.span(0.9, 1.0))
    return {"methods": {"baseline": {**metrics_summary(before), "model_id": base},
                        kept: {**metrics_summary(after), "model_id": model_id}}, **out}


def _retrain(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.dcd.fine_tune import retrain
    from core.models.catalog import require_classifier
    from core.models.evaluation import evaluate, metrics_summary
    from core.models.schedules import finetune_schedule

    base = require_classifier(ws, opts.classifier_id, purpose="fine-tune")
    if opts.mitigate == "corm":
        return _retrain_corm(ws, opts, base, progress)
    method = opts.record_as
    if method is None and opts.selection_id:
        method = ws.scalar("SELECT method FROM selections WHERE selection_id = ?", [opts.selection_id])
        if method is None:
            raise ValueError(f"no selection {opts.selection_id!r} in the workspace")
    model_id = retrain(ws, base_model_id=base, selection_id=opts.selection_id, method=method or "finetune",
                       config=finetune_schedule(ws, base, train_overrides(opts)), epochs=opts.finetune_epochs,
                       progress=progress.span(0, 0.9))
    metrics = evaluate(ws, model_id, ray=ray_config(opts), progress=progress.span(0.9, 1.0))
    return {"methods": {method or "finetune": {**metrics_summary(metrics), "model_id": model_id}}}


def _mitigation_options() -> tuple[Option, ...]:
    from core.scanner.mitigation import MISLABELED_POLICIES, CormConfig
    from core.scanner.mitigation_choice import STRONGER, ChoiceConfig

    d, c, g = CormConfig(), ChoiceConfig(), "mitigation (from slice annotations)"
    return (
        Option("mitigate", "choice", "none", choices=("none", "corm"), group=g,
               help="corm: Core Risk Minimization from the slices annotated spurious / mislabeled"),
        Option("run_id", picker="slice_run", group=g,
               help="slice run whose annotations to use (default: the latest)"),
        Option("corm_lambda", "float", d.lam, group=g, advanced=True, help=f"weight of the noise term ({d.lam})"),
        Option("corm_sigma", "float", d.sigma, group=g, advanced=True,
               help=f"noise std, normalised pixels ({d.sigma})"),
        Option("mask_threshold", "float", d.mask_threshold, group=g, advanced=True,
               help=f"share of an attribution map's peak that counts as spurious ({d.mask_threshold})"),
        Option("propagate", "flag", False, group=g, advanced=True,
               help="also mask train images sharing the spurious slices' feature (default: only their members)"),
        Option("propagate_threshold", "float", d.propagate_threshold, group=g, advanced=True,
               help=f"cosine similarity to the spurious prototype that gets masked ({d.propagate_threshold})"),
        Option("mislabeled", "choice", d.mislabeled, choices=MISLABELED_POLICIES, group=g, advanced=True,
               help=f"train members of slices annotated mislabeled: relabel to the model's label, drop, or keep "
                    f"({d.mislabeled})"),
        Option("corm_choice", "choice", c.grid, choices=("grid", "single", "off"), group=g,
               help=f"grid: plain fine-tuning against the spurious slices upweighted and CoRM at --corm-lambda and "
                    f"{STRONGER:g}x it, masks on members or propagated, the best on held-out slice members kept; "
                    f"single: plain fine-tuning against the given CoRM "
                    f"setting alone; off: the given CoRM setting, no comparison ({c.grid})"),
        Option("heldout_share", "float", c.heldout_share, group=g, advanced=True,
               help=f"share of each annotated slice's members held out to choose on, seeded by --seed "
                    f"({c.heldout_share})"),
    )


RETRAIN = JobSpec(
 "retrain", "Fine-tune the classifier on train + a debug-train selection (or with CoRM) and evaluate it.",
 (Option("selection_id", picker="selection", help="debug-train selection to add (none: train only)"),
  Option("classifier_id", picker="classifier", aliases=("--base-model-id",),
         help="classifier to fine-tune (default: the current one)"),
  Option("record_as", aliases=("--method",), advanced=True,
         help="method recorded for the new model (default: the selection's)"),
  *train_options(), *_mitigation_options(), *engine_options()),
 _retrain)


# -- the whole loop -------------------------------------------------------------------------------------------

def pipeline_options() -> tuple[Option, ...]:
    from core.dcd.pipeline import REST_OF_POOL_CHOICES, RETRIEVAL_CHOICES
    from core.dcd.strategies import METHODS

    return (classifier_options() + embedder_options() + train_options() + selection_options()
            + (Option("methods", "list", list(METHODS), choices=METHODS, group="selection",
                      help="methods to compare"),
               Option("retrieval", "choice", "checked", choices=RETRIEVAL_CHOICES, group="selection", advanced=True,
                      help="checked: DCD ships retrieval only where it beats the failure's images alone on 2 folds "
                           "of them (4 extra fine-tunings), else the failure-only fix; always: retrieval as found"),
               Option("rest_of_pool", "choice", "teacher", choices=REST_OF_POOL_CHOICES, group="selection",
                      advanced=True,
                      help="teacher: DCD's fix also trains on the rest of the pool the failure's teacher labels "
                           "with confidence (drawn with train, so test accuracy holds); off: only the failure's "
                           "images and what retrieval adds"),
               Option("from_slice", group="selection",
                      help="RUN:RANK: fix that slice's failure instead of the error_sample split's (without an "
                           "error_sample split the worst slice of a new slice run is the target)"),
               failure_option(group="selection"))
            + index_options() + engine_options())


def _pipeline(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.scanner.loop import run_loop

    return run_loop(ws, pipeline_config(opts), progress=progress)


PIPELINE = JobSpec("pipeline", "Run the whole DCD loop: train, embed, select (every method), retrain, evaluate; "
                               "without an error_sample split, for the worst slice AttributionScanner finds.",
                   pipeline_options(), _pipeline)

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (INGEST, TRAIN, PREDICT, EVALUATE, EMBED, SELECT, RETRAIN, PIPELINE)
