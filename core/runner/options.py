"""Typed job options, declared once: the CLI parsers, the jobs' typed options and the app's Jobs form are all
built from them.

An :class:`Option` names one setting of a job (``neighbours``, ``classifier_id`` ...); its flag is derived
from the name (``--neighbours``). Groups of options that several jobs share (classifier, embedder, training,
attribution) are tuples here; core.runner.configs turns a job's parsed options into core's config objects.
A renamed flag keeps its old spelling in ``aliases``: it still works and prints the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from core.constants import SPLITS

#: What an option's value is; the form picks its widget from this.
KINDS = ("text", "int", "float", "flag", "choice", "list", "path")
#: What of the workspace an option names; the form offers a picker of those.
PICKERS = ("classifier", "selection", "embedder", "slice_run")


@dataclass(frozen=True)
class Option:
    """One setting of a job.

    ``kind`` is one of :data:`KINDS`: a ``list`` takes several values (``--splits train test``; each value
    may also be comma-separated: ``--splits train,test``); a ``choice`` (or a ``list`` with ``choices``)
    takes only ``choices``. ``picker`` (one of :data:`PICKERS`) says which workspace objects the value
    names. ``aliases`` are deprecated flags that still work and print the current one.
    """

    name: str
    kind: str = "text"
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    group: str = ""
    required: bool = False
    picker: str | None = None
    aliases: tuple[str, ...] = ()
    advanced: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.picker is not None and self.picker not in PICKERS:
            raise ValueError(f"option {self.name!r}: picker must be one of {PICKERS}, got {self.picker!r}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def with_defaults(options: tuple[Option, ...], **defaults: Any) -> tuple[Option, ...]:
    """``options`` with some defaults replaced (by option name)."""
    unknown = set(defaults) - {o.name for o in options}
    if unknown:
        raise ValueError(f"no option(s) {sorted(unknown)} to set a default for")
    return tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in options)


def split_values(values: list[str] | None) -> list[str] | None:
    """A list option's values, each comma-separated part its own value (``["a,b", "c"] -> [a, b, c]``)."""
    if values is None:
        return None
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


# -- groups shared by several jobs ------------------------------------------------------------------

def classifier_options() -> tuple[Option, ...]:
    from core.models.pretrained import DEFAULT_BACKBONE
    from core.models.schedules import PRETRAINED_IMAGE_SIZE, SCRATCH_IMAGE_SIZE

    g = "classifier"
    return (
        Option("classifier", default=DEFAULT_BACKBONE, group=g,
               help=f"a pretrained backbone to fine-tune (default {DEFAULT_BACKBONE}, ImageNet weights installed "
                    f"with the project), or any timm architecture (resnet50, vit_small_patch16_224.dino, "
                    f"cifar_resnet20 ...): from scratch, or from --classifier-weights / --hub"),
        Option("classifier_weights", "path", group=g,
               help="local checkpoint: a trained classifier, or backbone weights to fine-tune"),
        Option("classifier_id", group=g, picker="classifier", help="use this classifier of the workspace as is"),
        Option("hub", "flag", False, group=g, advanced=True, help="download pretrained weights from timm's hub"),
        Option("image_size", "int", group=g,
               help=f"input resolution for a classifier trained here (default {PRETRAINED_IMAGE_SIZE} from "
                    f"pretrained weights, {SCRATCH_IMAGE_SIZE} from scratch)"),
    )


def embedder_options() -> tuple[Option, ...]:
    from core.models.features import EMBEDDING_LAYERS
    from core.models.pretrained import DEFAULT_BACKBONE

    g = "embedder"
    return (
        Option("embedder", default=DEFAULT_BACKBONE, group=g,
               help=f"the frozen feature space: a pretrained backbone (default {DEFAULT_BACKBONE}), any timm "
                    f"architecture with --embedder-weights or --embedder-hub (vit_small_patch16_224.dino, "
                    f"resnet50, cifar_resnet56 ...), or 'classifier' for the classifier's own penultimate layer"),
        Option("embedder_weights", "path", group=g, help="local weights file for the embedder"),
        Option("embedder_hub", "flag", False, group=g, advanced=True,
               help="download the embedder's weights from the hub"),
        Option("embedder_layers", "choice", "penultimate", choices=EMBEDDING_LAYERS, group=g,
               help="penultimate: the pooled last block (DCD's feature space); multiscale: mean and std of the "
                    "last 3 stages, which also finds low-level shifts such as blur, fog or noise"),
        Option("embedder_image_size", "int", group=g, advanced=True, help="override the embedder's input size"),
    )


def train_options() -> tuple[Option, ...]:
    from core.models.schedules import ADDED_MIXES
    from core.models.schedules import PRETRAINED_SCHEDULE as P
    from core.models.schedules import SCRATCH_SCHEDULE as S

    g = "training"

    def both(field: str) -> str:
        return f"default {getattr(P, field)} from pretrained weights, {getattr(S, field)} from scratch"

    return (
        Option("epochs", "int", group=g, help=f"epochs to train the classifier ({both('epochs')})"),
        Option("finetune_epochs", "int", group=g,
               help="epochs to fine-tune on train + selection (default: half of the classifier's epochs, at least 3)"),
        Option("trainable_stages", "text", group=g, advanced=True,
               help=f"train only the last N stages and the head (0: the head alone), or 'all' "
                    f"({both('trainable_stages')}; None: all); a classifier from scratch trains whole, "
                    f"its fine-tunings only the last N"),
        Option("added_share", "float", P.added_share, group=g, advanced=True,
               help=f"share of every fine-tuning batch drawn from the added selection ({P.added_share}); "
                    f"0 samples train and selection alike"),
        Option("added_mix", "choice", P.added_mix, choices=ADDED_MIXES, group=g, advanced=True,
               help=f"how that share is taken: within each class, keeping train's class mix (class), or of the "
                    f"whole batch (batch; default {P.added_mix})"),
        Option("batch_size", "int", group=g, advanced=True, help=f"images per step ({P.batch_size})"),
        Option("lr", "float", group=g, advanced=True, help=f"learning rate ({both('lr')})"),
        Option("seed", "int", P.seed, group=g, help="random seed of data order and initial weights"),
    )


def attribution_options() -> tuple[Option, ...]:
    from core.scanner.attribution import (
        DEFAULT_SPLITS,
        METHODS,
        TARGETS,
        AttributionConfig,
    )

    d, g = AttributionConfig(), "attribution"
    return (
        Option("classifier_id", group=g, picker="classifier", aliases=("--model-id",),
               help="classifier to attribute (default: the current one)"),
        Option("attribution", "choice", d.method, choices=METHODS, group=g, aliases=("--method",),
               help=f"attribution method ({d.method})"),
        Option("target", "choice", d.target, choices=TARGETS, group=g, advanced=True,
               help="class to attribute: the image's label where known, or the prediction (label)"),
        Option("heatmap_size", "int", d.heatmap_size, group=g, advanced=True,
               help=f"stored map side ({d.heatmap_size})"),
        Option("splits", "list", list(DEFAULT_SPLITS), choices=SPLITS, group=g, help="splits to attribute"),
        Option("attr_batch_size", "int", d.batch_size, group=g, advanced=True,
               help=f"images per batch ({d.batch_size})"),
        Option("ig_steps", "int", d.ig_steps, group=g, advanced=True, help="integrated gradients steps"),
        Option("no_bf16", "flag", False, group=g, advanced=True, help="always compute in fp32"),
    )


def index_options() -> tuple[Option, ...]:
    """The pool index's memory budget (core.dcd.index_build.plan_index)."""
    from core.dcd.index_build import default_memory_gb

    return (Option("index_memory_gb", "float", group="index", advanced=True,
                   help=f"memory budget of the pool index in GB (default {default_memory_gb():g}: half the RAM, at "
                        f"most 4): exact search while it fits, then IVF, then compressed codes re-ranked from the "
                        f"vectors on disk"),)


def engine_options() -> tuple[Option, ...]:
    """Where a per-image job runs its model: here, or on Ray Data (core.engines.ray_data)."""
    from core.engines.ray_data import ENGINES

    g = "engine"
    return (
        Option("engine", "choice", "local", choices=ENGINES, group=g,
               help="local: in this job's process; ray: decode and run the model on Ray Data (a Ray runtime "
                    "started for the job, or the cluster at --ray-address); results are the same"),
        Option("ray_address", group=g, advanced=True,
               help="with --engine ray: the cluster to run on, 'auto' (the one this machine belongs to) or "
                    "ray://HOST:10001 (default: a local runtime for this job, shut down after)"),
        Option("ray_actors", "int", group=g, advanced=True,
               help="with --engine ray: model replicas (default: one per GPU, else one per node)"),
    )


def selection_options() -> tuple[Option, ...]:
    from core.dcd.strategies import DEFAULT_LABEL_POLICY, LABEL_ISSUE_CHOICES, LABEL_POLICIES, PER_FAILURE_IMAGE

    g = "selection"
    return (
        Option("neighbours", "int", group=g, aliases=("--k",),
               help="neighbours searched per failure image (default: twice the budget over the failure's images, "
                    "at least 5)"),
        Option("budget", "int", group=g,
               help=f"most images to select (default: {PER_FAILURE_IMAGE} per failure image, at most a quarter of "
                    f"the pool)"),
        Option("label_policy", "choice", DEFAULT_LABEL_POLICY, choices=LABEL_POLICIES, group=g,
               help="label of a retrieved pool image: the posterior of its true class from the failure's teacher "
                    "(the classifier fine-tuned on the failure's images) and its weak label, kept at 0.9 "
                    "(teacher), its weak label (weak), the error image's label (source), or only images where "
                    f"both agree (agree); default {DEFAULT_LABEL_POLICY}"),
        Option("label_issues", "choice", "auto", choices=LABEL_ISSUE_CHOICES, group=g, advanced=True,
               help="dcd and the pool's flagged label issues: drop (never select them; found first with the "
                    "pretrained backbone if none are stored), keep, or auto (drop for a slice, keep for the "
                    "error_sample split)"),
    )


def failure_option(*, group: str = "") -> Option:
    """``--failure REF``: the failure to fix (the select and pipeline jobs)."""
    return Option("failure", group=group,
                  help="the failure to fix: error_sample, a slice RUN:RANK (e.g. latest:1), or the id of a failure "
                       "made with `python -m jobs.failure` (a confusion cell, picked images); DCD retrieves for its "
                       "query part, and its held-out part is the eval set each fix is measured on")
