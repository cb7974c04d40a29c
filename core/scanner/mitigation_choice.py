"""Mitigation that never ships a worse model: CoRM settings against plain fine-tuning, chosen on held-out
members of the annotated slices (issue #15).

CoRM can hurt: where the classifier already looks at part of the object, the noise term teaches it to
answer from what is left around the noised region (docs/results.md, Waterbirds-like ``--seed 1``). So
:func:`choose_mitigation` does not trust one setting:

1. **Hold out** a seeded share (:data:`HELDOUT_SHARE`) of each annotated slice's members (annotated
   spurious or mislabeled): of its ``train`` members, which no candidate is then trained on, and of its
   ``error_sample`` / ``error_heldout`` members (never trained on anyway: they are the failure
   distribution's own images, so they sharpen the choice at no cost in training data). ``test`` is never
   used: it stays the judge of the kept model. Train members whose label the mislabel fix changes are not
   held out: their given label is the one the annotation doubts. Each slice's held-out members are the
   named eval set ``mitigation:<run_id>:<rank>`` (``eval_sets``), made once and reused by later
   mitigations of that run, so all their models are measured on the same images.
2. **Train the candidates** from the same classifier, with the same schedule and mislabel fixes: plain
   fine-tuning; the spurious slices' (not held-out) train members upweighted to :data:`UPWEIGHT_SHARE` of
   every batch (the group-reweighting idea of JTT, Liu et al. 2021: those members are the minority the
   shortcut gets wrong); and CoRM over a small grid around the given setting: ``lam`` and :data:`STRONGER`
   times it, masks on the spurious slices' members only or propagated (:func:`candidate_settings`).
3. **Score** each on the held-out members: the accuracy of its worst held-out slice (ties: the mean over
   the slices, then the simpler candidate).
4. **Keep** the best. Another candidate is kept only if it beats plain fine-tuning by more than the noise
   of the held-out images (:func:`noise_margin`) on its worst slice, or ties it there (no worse) and beats
   it by more than the noise on the mean over the slices (on Waterbirds-like ``--seed 1`` every candidate
   scored 0% on the worst slice, and only the mean told them apart); otherwise plain fine-tuning, the
   simpler model, is kept and the reason says so. Only the kept model is saved and registered (with its
   eval sets, in one transaction), so a killed job leaves nothing and the workspace does not fill with the
   losers; its ``models.config`` holds the ``mitigation`` record (candidates, their held-out scores, which
   was kept and why), which :func:`mitigation_summary` turns into a sentence and a table for the Before /
   after page.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from core.data.images import pixels
from core.dcd.fine_tune import FineTuned, fine_tune
from core.models.catalog import get_model, insert_model_row, load_classifier, new_model_id
from core.models.inference import predict_probs
from core.models.schedules import TrainConfig
from core.progress import Progress, as_progress
from core.scanner.annotations import slice_findings
from core.scanner.mitigation import CormConfig, corm_fine_tune, mislabel_fixes, resolve_run
from core.scanner.runs import get_slices, slice_members
from core.store.workspace import Workspace

HELDOUT_SHARE = 0.3
EVAL_SET_PREFIX = "mitigation:"
HELDOUT_SPLITS = ("train", "error_sample", "error_heldout")  # never test: it judges the kept model
STRONGER = 3.0  # the grid's stronger noise term: this many times the given lam
MASK_CHOICES = ("members", "propagate")
ACTED_ON = {"spurious", "mislabeled"}  # the findings a mitigation acts on; their slices get held-out sets
PLAIN = "finetune"
UPWEIGHT = "upweight"
UPWEIGHT_SHARE = 0.5  # the spurious slices' train members: this share of every batch


@dataclass(frozen=True)
class ChoiceConfig:
    """How the mitigation is chosen. grid: ``"grid"`` (plain fine-tuning against CoRM at lam and
    STRONGER x lam, members only or propagated), ``"single"`` (against the given CoRM setting alone);
    heldout_share: share of each annotated slice's members held out; seed: of that draw."""

    grid: str = "grid"
    heldout_share: float = HELDOUT_SHARE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid not in ("grid", "single"):
            raise ValueError(f"grid must be 'grid' or 'single', got {self.grid!r}")
        if not 0.0 < self.heldout_share < 1.0:
            raise ValueError(f"the held-out share must be between 0 and 1 (exclusive), got {self.heldout_share}")


@dataclass
class Candidate:
    name: str
    settings: dict
    config: CormConfig | None  # None: plain fine-tuning
    heldout: dict[str, float] = field(default_factory=dict)
    score: float = float("nan")  # worst held-out slice accuracy
    mean: float = float("nan")
    tuned: FineTuned | None = None
    summary: dict = field(default_factory=dict)

    def label(self) -> str:
        return describe(self.settings)


def describe(settings: dict) -> str:
    """A candidate as a stakeholder reads it: 'plain fine-tuning', 'upweighted slices (50% of each batch)',
    'CoRM (λ=3, propagated masks)'."""
    if not settings:
        return "plain fine-tuning"
    if "upweight_share" in settings:
        return f"upweighted slices ({setting_text(settings)})"
    return f"CoRM ({setting_text(settings)})"


def setting_text(settings: dict) -> str:
    """A candidate's setting in a few words: 'λ=1, members only', '50% of each batch'."""
    if "upweight_share" in settings:
        return f"{settings['upweight_share']:.0%} of each batch"
    masks = "propagated masks" if settings.get("propagate") else "members only"
    return f"λ={settings['lam']:g}, {masks}"


# -- held-out members -------------------------------------------------------------------------------------

def eval_set_name(run_id: str, rank: int) -> str:
    return f"{EVAL_SET_PREFIX}{run_id}:{int(rank)}"


def heldout_sets(ws: Workspace, run_id: str, slice_ids: list[int], *, share: float, seed: int,
                 keep_out: set[int] = frozenset()) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """``({eval_set: image ids}, new eval_sets rows)``: each slice's held-out members, reused where its eval
    set exists already, else drawn (seeded, per split) from its members of :data:`HELDOUT_SPLITS` that are
    labelled and not in ``keep_out`` (train members whose label a fix changes)."""
    from core.dcd.slice_targets import split_members

    slices = get_slices(ws, run_id)
    rank_of = dict(zip(slices.slice_id.astype(int), slices["rank"].astype(int)))
    members = slice_members(ws, run_id)
    stored = ws.df("SELECT eval_set, image_id FROM eval_sets WHERE eval_set LIKE ?", [f"{EVAL_SET_PREFIX}{run_id}:%"])
    sets: dict[str, list[int]] = {}
    new_rows = []
    for sid in sorted(slice_ids):
        name = eval_set_name(run_id, rank_of[sid])
        if name in set(stored.eval_set):
            sets[name] = sorted(int(i) for i in stored.image_id[stored.eval_set == name])
            continue
        part = members[(members.slice_id == sid) & members.split.isin(HELDOUT_SPLITS) & members.label.notna()
                       & ~members.image_id.isin(keep_out)]
        held: list[int] = []
        for _, by_split in part.groupby("split"):
            held += split_members(by_split.image_id.to_numpy(np.int64), heldout_share=share, seed=seed)[1].tolist()
        if held:
            sets[name] = sorted(held)
            new_rows.append(pd.DataFrame({"eval_set": name, "image_id": sorted(held), "description":
                                          f"mitigation held-out: {share:.0%} of the members of slice "
                                          f"{rank_of[sid]} of {run_id} (train, error_sample, error_heldout)"}))
    rows = pd.concat(new_rows, ignore_index=True) if new_rows else pd.DataFrame(
        columns=["eval_set", "image_id", "description"])
    return sets, rows


def noise_margin(accuracy: float, n: int) -> float:
    """How far apart two scores on ``n`` images may lie by chance: one binomial standard error, at least one
    image (1 / n)."""
    if n <= 0:
        return 1.0
    return max(1.0 / n, math.sqrt(accuracy * (1.0 - accuracy) / n))


# -- candidates -------------------------------------------------------------------------------------------

def candidate_settings(config: CormConfig, grid: str = "grid") -> list[Candidate]:
    """Plain fine-tuning first, then (``"grid"``) the upweighted slices, then the CoRM settings: the given one
    alone (``"single"``), or lam and STRONGER x lam times masks on members / propagated (``"grid"``), at most
    4; lam 0 is plain fine-tuning."""
    out = [Candidate(PLAIN, {}, None)]
    if grid == "single":
        configs = [config]
    else:
        out.append(Candidate(UPWEIGHT, {"upweight_share": UPWEIGHT_SHARE}, None))
        lams = sorted({config.lam, STRONGER * config.lam} - {0.0})
        configs = [replace(config, lam=lam, propagate=m == "propagate") for lam in lams for m in MASK_CHOICES]
    for c in configs:
        if c.lam == 0:
            continue
        settings = {"lam": c.lam, "sigma": c.sigma, "mask_threshold": c.mask_threshold, "propagate": c.propagate,
                    "propagate_threshold": c.propagate_threshold}
        name = f"corm:lam={c.lam:g}:{'propagate' if c.propagate else 'members'}"
        out.append(Candidate(name, settings, c))
    return out


def score(tuned: FineTuned, px: np.ndarray, labels: np.ndarray, set_of: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy of a fine-tuned model on each held-out set (``set_of``: eval set -> row positions in ``px``)."""
    if not len(px):
        return {}
    correct = predict_probs(tuned.model, px, tuned.data_config).argmax(1) == labels
    return {name: float(correct[rows].mean()) for name, rows in set_of.items()}


def rank_key(c: Candidate, order: int) -> tuple:
    """Best first: higher worst-slice score, then higher mean, then the simpler (earlier) candidate."""
    return (-c.score, -c.mean, order)


def pick(cands: list[Candidate], sizes: dict[str, int]) -> tuple[Candidate, str]:
    """The kept candidate and the sentence saying why (see the module doc, step 4)."""
    plain, corms = cands[0], cands[1:]
    n_total = sum(sizes.values())
    if not sizes:
        return plain, ("Plain fine-tuning kept: the annotated slices have no member to hold out, so no CoRM "
                       "setting could be checked, and plain fine-tuning is the safer choice.")
    if not corms:
        return plain, "Plain fine-tuning kept: no other candidate was tried."
    best = min(corms, key=lambda c: rank_key(c, cands.index(c)))
    worst_set = min(plain.heldout, key=plain.heldout.get)
    margin = noise_margin(plain.score, sizes[worst_set])
    where = f"on {n_total} held-out members of the annotated slices"
    if best.score > plain.score + margin:
        return best, (f"{best.label()} kept: {where} its worst slice scored {best.score:.0%} against "
                      f"{plain.score:.0%} for plain fine-tuning.")
    mean_margin = noise_margin(plain.mean, n_total)
    if best.score >= plain.score and best.mean > plain.mean + mean_margin:  # a tie on the worst slice
        return best, (f"{best.label()} kept: {where} its worst slice scored {best.score:.0%}, as plain "
                      f"fine-tuning did ({plain.score:.0%}), and across the held-out slices it scored "
                      f"{best.mean:.0%} against {plain.mean:.0%} on average, beyond the noise (±{mean_margin:.0%}).")
    if best.score > plain.score:
        return plain, (f"Plain fine-tuning kept: {where} the best other candidate, {best.label()}, scored "
                       f"{best.score:.0%} on its worst slice against {plain.score:.0%}, within the noise of so few "
                       f"images (±{margin:.0%}), and plain fine-tuning is the simpler model.")
    return plain, (f"Plain fine-tuning kept: {where} its worst slice scored {plain.score:.0%} against "
                   f"{best.score:.0%} for the best other candidate, {best.label()}.")


def spurious_train_members(ws: Workspace, run_id: str) -> set[int]:
    """The train members of the slices annotated spurious (what the upweighted candidate upweights)."""
    spurious = [s for s, kinds in slice_findings(ws, run_id).items() if "spurious" in kinds]
    members = slice_members(ws, run_id)
    return {int(i) for i in members.image_id[members.slice_id.isin(spurious) & (members.split == "train")]}


def _train(ws: Workspace, c: Candidate, *, base_model_id: str, run_id: str, fixes: tuple[set[int], dict[int, int]],
           held: set[int], config: CormConfig, train_config: TrainConfig, progress: Progress) -> None:
    if c.config is None:
        drop, relabel = fixes
        up = spurious_train_members(ws, run_id) - held - drop if c.name == UPWEIGHT else set()
        c.tuned = fine_tune(ws, base_model_id=base_model_id, selection_id=None, config=train_config,
                            epochs=config.epochs, drop_ids=drop | held, relabel=relabel,
                            upweight_ids=up or None, upweight_share=c.settings.get("upweight_share"),
                            progress=progress)
        c.summary = {"n_dropped": len(drop), "n_relabeled": len(relabel), **({"n_upweighted": len(up)} if up else {})}
    else:
        c.tuned, c.summary = corm_fine_tune(ws, base_model_id=base_model_id, run_id=run_id, config=c.config,
                                            train_config=train_config, exclude_ids=frozenset(held),
                                            progress=progress)


def applied_findings(ws: Workspace, run_id: str, kept: Candidate, mislabeled_policy: str) -> dict[str, list[str]]:
    """``{slice_id: kinds the kept model applied}`` for every annotated slice (spurious: CoRM only)."""
    out = {}
    for sid, kinds in slice_findings(ws, run_id).items():
        applied = [k for k in kinds if (k == "spurious" and (kept.config is not None or kept.name == UPWEIGHT))
                   or (k == "mislabeled" and mislabeled_policy != "keep")]
        out[str(sid)] = applied
    return out


# -- the choice -----------------------------------------------------------------------------------------

def choose_mitigation(ws: Workspace, *, base_model_id: str, run_id: str | None = None,
                      config: CormConfig = CormConfig(), train_config: TrainConfig = TrainConfig(),
                      choice: ChoiceConfig = ChoiceConfig(), progress: Progress | None = None) -> tuple[str, dict]:
    """Train the candidates, keep the best on the held-out members, register it: ``(model_id, record)``,
    the record being what the kept model's ``models.config["mitigation"]`` holds (module doc)."""
    progress = as_progress(progress)
    t0 = time.perf_counter()
    run_id = resolve_run(ws, base_model_id, run_id)
    run_model = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id])
    findings = slice_findings(ws, run_id)
    fixes = mislabel_fixes(ws, run_id, run_model, config.mislabeled)
    sets, new_rows = heldout_sets(ws, run_id, [s for s, kinds in findings.items() if set(kinds) & ACTED_ON],
                                  share=choice.heldout_share, seed=choice.seed, keep_out=fixes[0] | set(fixes[1]))
    held = {i for ids in sets.values() for i in ids}
    px, labels, set_of = _heldout_pixels(ws, base_model_id, sets)
    cands = candidate_settings(config, choice.grid)
    if not spurious_train_members(ws, run_id) - held - fixes[0]:  # nothing to upweight: it would be plain
        cands = [c for c in cands if c.name != UPWEIGHT]
    for k, c in enumerate(cands):
        print(f"candidate {k + 1}/{len(cands)}: {c.label()}", flush=True)
        _train(ws, c, base_model_id=base_model_id, run_id=run_id, fixes=fixes, held=held, config=config,
               train_config=train_config, progress=progress.span(0.97 * k / len(cands), 0.97 * (k + 1) / len(cands)))
        c.heldout = score(c.tuned, px, labels, set_of)
        c.score = min(c.heldout.values(), default=float("nan"))
        c.mean = float(np.mean(list(c.heldout.values()))) if c.heldout else float("nan")
        print(f"  held-out worst slice {c.score:.3f}, mean {c.mean:.3f}: {c.heldout}", flush=True)
        _forget_losers(cands[: k + 1])
    kept, reason = pick(cands, {name: len(ids) for name, ids in sets.items()})
    record = {"run_id": run_id, "chosen": kept.name, "reason": reason,
              "candidates": [{"name": c.name, "settings": c.settings, "heldout": c.heldout,
                              "score": _num(c.score), "mean": _num(c.mean)} for c in cands],
              "findings": applied_findings(ws, run_id, kept, config.mislabeled),
              "annotated": {str(s): k for s, k in findings.items()},
              "heldout_eval_sets": sorted(sets), "heldout_sizes": {n: len(ids) for n, ids in sets.items()},
              "heldout_share": choice.heldout_share, "seed": choice.seed, "grid": choice.grid,
              "mislabeled": config.mislabeled, "summary": kept.summary,
              "seconds": round(time.perf_counter() - t0, 1)}
    model_id = _register(ws, kept, record, new_rows)
    progress.report(1.0, f"kept {kept.label()}", force=True)
    return model_id, record


def _heldout_pixels(ws: Workspace, base_model_id: str, sets: dict[str, list[int]]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(pixels of every held-out image, their labels, {eval set: row positions}) at the classifier's size."""
    held = sorted({i for ids in sets.values() for i in ids})
    info = ws.df("SELECT image_id, path, label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[])) "
                 "ORDER BY image_id", [held])
    size = load_classifier(ws, base_model_id)[1].image_size
    px = pixels(ws, info.path.tolist(), size) if len(info) else np.zeros((0, size, size, 3), np.uint8)
    pos = {int(i): r for r, i in enumerate(info.image_id)}
    return px, info.label.astype(int).to_numpy(), {name: np.array([pos[i] for i in ids]) for name, ids in sets.items()}


def _num(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def _forget_losers(done: list[Candidate]) -> None:
    """Free the trained models of candidates that can no longer be kept (all but plain and the best CoRM)."""
    corms = [c for c in done[1:] if c.tuned is not None]
    best = min(corms, key=lambda c: rank_key(c, done.index(c))) if corms else None
    for c in corms:
        if c is not best:
            c.tuned = None


def _register(ws: Workspace, kept: Candidate, record: dict, new_rows: pd.DataFrame) -> str:
    """Save the kept model and record it with its new eval sets in one transaction."""
    method = "corm" if kept.config is not None else kept.name
    model_id = new_model_id(method)
    extra = {"mitigation": record}
    if kept.config is not None:
        extra["corm"] = asdict(kept.config)
    row = kept.tuned.record(model_id, method, kept.tuned.save(ws, model_id), extra)
    with ws.write() as con:
        if len(new_rows):
            con.register("staging_mitigation_sets", new_rows)
            con.execute("INSERT INTO eval_sets SELECT eval_set, image_id, description FROM staging_mitigation_sets")
            con.unregister("staging_mitigation_sets")
        insert_model_row(con, **row)
    return model_id


# -- what the Before / after page shows -------------------------------------------------------------------

def mitigation_record(ws: Workspace, model_id: str) -> dict | None:
    """The ``mitigation`` record of a model's config, or None."""
    try:
        return get_model(ws, model_id).config.get("mitigation")
    except KeyError:
        return None


def mitigation_summary(ws: Workspace, model_id: str) -> tuple[str, pd.DataFrame] | None:
    """(the reason sentence, a table of the candidates: candidate, kept, worst held-out slice, mean, one
    column per held-out slice), or None for a model made without a mitigation choice."""
    rec = mitigation_record(ws, model_id)
    if not rec:
        return None
    sets = list(rec.get("heldout_eval_sets", []))
    sizes = rec.get("heldout_sizes", {})
    rows = []
    for c in rec.get("candidates", []):
        row = {"candidate": describe(c.get("settings") or {}), "kept": c["name"] == rec.get("chosen"),
               "worst held-out slice": c.get("score"), "mean": c.get("mean")}
        for name in sets:
            row[f"slice {name.rsplit(':', 1)[-1]} (n={sizes.get(name, '?')})"] = c.get("heldout", {}).get(name)
        rows.append(row)
    return str(rec.get("reason", "")), pd.DataFrame(rows)
