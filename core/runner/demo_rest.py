"""The rest of the demo, as background jobs: what ``jobs.demo --rest-in-background`` starts once DCD's fix is in.

The demo's loop ran DCD (and the failure-only fix, its teacher) only; :func:`launch_rest` makes the other
methods' selections as core.dcd.pipeline would, and starts their fine-tuning and the slices as background
jobs (core.runner.processes), so the app opens early (core.runner.first_run) and they arrive in it. What the
loop made is read from the workspace through core, never from the loop's report.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.dcd.pipeline import PipelineConfig
from core.dcd.selection import latest_selection
from core.dcd.strategies import SelectionRequest, select
from core.models.catalog import require_classifier
from core.runner.command_line import job_arguments
from core.runner.configs import train_option_values
from core.runner.dcd_jobs import RETRAIN
from core.runner.processes import start_job
from core.runner.scanner_jobs import SLICES
from core.store.workspace import Workspace


def launch_rest(ws: Workspace, loop: PipelineConfig, methods: Sequence[str]) -> list[dict[str, str]]:
    """Select for the baseline ``methods`` as core.dcd.pipeline does (``random``: the failure's images and as
    many pool images as DCD retrieved) and launch, as background jobs, their fine-tuning with the training
    settings of ``loop`` (the loop's config, as the demo resolved it) and the slices of the classifier under
    debug. What the loop made is read from the workspace: the classifier under debug (the current one, which
    the loop trained) and DCD's selection (its embedder, budget and retrieved images). Returns
    ``[{"job_id", "kind", "what"}]``."""
    base_id = require_classifier(ws, purpose="fine-tune on the baselines' selections")
    dcd = latest_selection(ws, "dcd")
    n_match = dcd.n_of_kind("retrieved") or dcd.params["budget"]
    request = SelectionRequest(budget=n_match, embedder_id=dcd.params["embedder_id"], label_policy=loop.label_policy,
                               seed=loop.seed, index_memory_gb=loop.index_memory_gb)
    train = train_option_values(loop.train, loop.finetune_epochs)
    jobs = []
    for method in methods:
        sel = select(ws, method, request)
        args = ["--selection-id", sel.selection_id, "--classifier-id", base_id, *job_arguments(RETRAIN, train)]
        jobs.append({"job_id": start_job(ws, RETRAIN.name, args), "kind": RETRAIN.name,
                     "what": f"fine-tuning on {method}"})
    jobs.append({"job_id": start_job(ws, SLICES.name, ["--classifier-id", base_id]), "kind": SLICES.name,
                 "what": "attributions and slices of the baseline"})
    return jobs
