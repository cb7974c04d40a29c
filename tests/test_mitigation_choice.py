"""Mitigation that never ships a worse model: held-out slice members, the candidates, the choice, the record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.scanner.mitigation import CormConfig
from core.scanner.mitigation_choice import Candidate, ChoiceConfig, candidate_settings, noise_margin, pick

FAST = {"finetune_epochs": 1, "batch_size": 32}


@pytest.fixture()
def annotated(sliced_copy):
    """The tiny workspace, sliced, with one slice annotated spurious and mislabeled and one spurious:
    (Workspace, run_id, both_slice, spurious_slice)."""
    from core.scanner.annotations import annotate
    from core.scanner.runs import latest_run, slice_members
    ws = sliced_copy[0]
    run_id = latest_run(ws)
    m = slice_members(ws, run_id)
    train_err = m[(m.split == "train") & ~m.correct.astype(bool)]
    counts = (train_err if len(train_err) else m[m.split == "train"]).slice_id.value_counts()
    both = int(counts.index[0])
    other = int(next(s for s in m.slice_id.unique() if int(s) != both))
    annotate(ws, run_id, both, "spurious", annotator="tester")
    annotate(ws, run_id, both, "mislabeled", annotator="tester")  # a later annotation of the other finding
    annotate(ws, run_id, other, "spurious", annotator="tester")
    return ws, run_id, both, other


def _choose(ws, run_id, grid="single", **kw):
    from core.models.catalog import current_classifier
    from core.models.schedules import finetune_schedule
    from core.scanner.mitigation_choice import choose_mitigation

    base = current_classifier(ws)
    cfg = CormConfig(epochs=FAST["finetune_epochs"], **kw)
    train = finetune_schedule(ws, base, {"batch_size": FAST["batch_size"]})
    return base, *choose_mitigation(ws, base_model_id=base, run_id=run_id, config=cfg, train_config=train,
                                    choice=ChoiceConfig(grid=grid))


# -- annotations: several findings on one slice ------------------------------------------------------------

def test_a_slice_keeps_both_findings_and_a_later_core_replaces_only_spurious(annotated):
    from core.scanner.annotations import annotate, annotated_slices, slice_findings

    ws, run_id, both, other = annotated
    assert set(slice_findings(ws, run_id)[both]) == {"spurious", "mislabeled"}
    assert both in annotated_slices(ws, run_id, "spurious") and both in annotated_slices(ws, run_id, "mislabeled")
    annotate(ws, run_id, both, "core")
    assert slice_findings(ws, run_id)[both] == ["core", "mislabeled"]
    assert both not in annotated_slices(ws, run_id, "spurious") and other in annotated_slices(ws, run_id, "spurious")


def test_both_findings_of_one_slice_are_applied(annotated):
    """The slice annotated spurious and mislabeled gets masks (CoRM) and its mislabel fixes."""
    from core.models.catalog import current_classifier
    from core.models.schedules import finetune_schedule
    from core.scanner.annotations import annotate
    from core.scanner.mitigation import corm_fine_tune, mislabel_fixes
    from core.scanner.runs import slice_members

    ws, run_id, both, _ = annotated
    base = current_classifier(ws)
    m = slice_members(ws, run_id, both)
    train = m[m.split == "train"]
    errors = {int(i) for i in train.image_id[~train.correct.astype(bool)]}
    assert errors, "the planted slice needs disputed train members"
    assert mislabel_fixes(ws, run_id, base, "drop") == (errors, {})
    # relabel: in a spurious slice the prediction is the spurious feature's, so the disputed are dropped
    assert mislabel_fixes(ws, run_id, base, "relabel") == (errors, {})
    _, summary = corm_fine_tune(ws, base_model_id=base, run_id=run_id, config=CormConfig(epochs=1),
                                train_config=finetune_schedule(ws, base, {"batch_size": 32}))
    assert both in summary["spurious_slices"] and summary["n_member_masks"] > 0
    assert summary["n_dropped"] == len(errors) and summary["n_relabeled"] == 0
    # a class named by the annotator is applied as told, to every member labelled otherwise
    annotate(ws, run_id, both, "mislabeled", relabel_to=0)
    relabel = mislabel_fixes(ws, run_id, base, "relabel")[1]
    assert relabel == {int(r.image_id): 0 for r in train.itertuples() if r.label != 0}


# -- the choice, as a pure decision ------------------------------------------------------------------------

def _cand(name, score, mean=None, settings=None):
    c = Candidate(name, settings if settings is not None else ({} if name == "finetune" else {"lam": 1.0}), None)
    c.score, c.mean, c.heldout = score, score if mean is None else mean, {"mitigation:r:1": score}
    return c


def test_pick_keeps_corm_only_when_it_beats_plain_beyond_noise():
    sizes = {"mitigation:r:1": 100}
    margin = noise_margin(0.5, 100)
    assert margin == pytest.approx(0.05)
    kept, why = pick([_cand("finetune", 0.5), _cand("corm:a", 0.62), _cand("corm:b", 0.7)], sizes)
    assert kept.name == "corm:b" and why.startswith("CoRM (λ=1, members only) kept") and "70%" in why
    kept, why = pick([_cand("finetune", 0.5), _cand("corm:a", 0.53)], sizes)
    assert kept.name == "finetune" and "within the noise" in why and "simpler" in why
    kept, why = pick([_cand("finetune", 0.6), _cand("corm:a", 0.4)], sizes)
    assert kept.name == "finetune" and "60% against 40%" in why
    # ties on the worst slice go to the higher mean
    kept, _ = pick([_cand("finetune", 0.1), _cand("corm:a", 0.9, 0.9), _cand("corm:b", 0.9, 0.95)], sizes)
    assert kept.name == "corm:b"
    # tied with plain on the worst slice: kept only if better on the mean beyond the noise, and never if worse
    kept, why = pick([_cand("finetune", 0.0, 0.0), _cand("upweight", 0.0, 0.22, {"upweight_share": 0.5})], sizes)
    assert kept.name == "upweight" and "as plain fine-tuning did (0%)" in why and "22% against 0%" in why
    kept, _ = pick([_cand("finetune", 0.0, 0.2), _cand("corm:a", 0.0, 0.22)], sizes)
    assert kept.name == "finetune"
    kept, _ = pick([_cand("finetune", 0.3, 0.3), _cand("corm:a", 0.2, 0.9)], sizes)
    assert kept.name == "finetune"
    assert noise_margin(1.0, 8) == pytest.approx(1 / 8) and noise_margin(0.0, 0) == 1.0


def test_candidate_grid_is_plain_upweighted_then_at_most_four_corm_settings():
    grid = candidate_settings(CormConfig(lam=2.0), "grid")
    assert [c.name for c in grid] == ["finetune", "upweight", "corm:lam=2:members", "corm:lam=2:propagate",
                                      "corm:lam=6:members", "corm:lam=6:propagate"]
    assert grid[0].config is None and grid[0].settings == {}
    assert grid[1].config is None and grid[1].label() == "upweighted slices (50% of each batch)"
    single = candidate_settings(CormConfig(lam=1.0, propagate=True), "single")
    assert [c.name for c in single] == ["finetune", "corm:lam=1:propagate"]
    assert [c.name for c in candidate_settings(CormConfig(lam=0.0), "grid")] == ["finetune", "upweight"]


# -- the choice on a workspace -----------------------------------------------------------------------------

@pytest.mark.slow
def test_heldout_members_are_never_trained_on_and_the_record_is_written(annotated, monkeypatch):
    import core.dcd.fine_tune as training
    from core.models.catalog import get_model
    from core.models.evaluation import evaluate
    from core.scanner.mitigation_choice import EVAL_SET_PREFIX, mitigation_summary, spurious_train_members

    ws, run_id, both, other = annotated
    seen: list[set[int]] = []
    weighted: list[np.ndarray | None] = []
    real, real_fit = training.training_set, training.fit

    def spy(*args, **kwargs):
        df = real(*args, **kwargs)
        seen.append({int(i) for i in df.image_id})
        return df

    def fit_spy(*args, **kwargs):
        weighted.append(kwargs.get("sample_weights"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "training_set", spy)
    monkeypatch.setattr(training, "fit", fit_spy)
    base, model_id, record = _choose(ws, run_id, grid="grid")
    assert len(seen) == 6 == len(record["candidates"])  # plain, upweighted, 2 lam x 2 masks, each trained once
    # the upweighted candidate draws half of every batch from the spurious slices' train members it trains on
    up = next(c for c in record["candidates"] if c["name"] == "upweight")
    w = weighted[1]
    assert up["settings"] == {"upweight_share": 0.5} and w is not None
    rows = np.array(sorted(seen[1]))
    on = np.isin(rows, sorted(spurious_train_members(ws, run_id)))
    assert on.any() and w[on].sum() == pytest.approx(0.5) and w[~on].sum() == pytest.approx(0.5)
    sets = ws.df("SELECT e.eval_set, e.image_id, e.description, i.split FROM eval_sets e JOIN images i "
                 "USING (image_id) WHERE e.eval_set LIKE ?", [EVAL_SET_PREFIX + "%"])
    held = set(sets.image_id.astype(int))
    assert held and set(sets.split) <= {"train", "error_sample", "error_heldout"}  # never test
    assert "train" in set(sets.split) and all(held.isdisjoint(s) for s in seen)
    assert sorted(sets.eval_set.unique()) == record["heldout_eval_sets"] and sets.description.notna().all()

    rec = get_model(ws, model_id).config["mitigation"]
    assert rec == json.loads(json.dumps(record))
    assert {"run_id", "chosen", "reason", "candidates", "findings", "heldout_eval_sets"} <= set(rec)
    assert rec["chosen"] in [c["name"] for c in rec["candidates"]]
    assert get_model(ws, model_id).method == (rec["chosen"] if rec["chosen"] in ("finetune", "upweight") else "corm")
    assert ws.scalar("SELECT count(*) FROM models WHERE config LIKE '%\"mitigation\"%'") == 1  # the kept one only
    kept = next(c for c in rec["candidates"] if c["name"] == rec["chosen"])
    # the kept candidate's held-out scores are what the metrics table reports for the registered model
    metrics = evaluate(ws, model_id)
    for name, acc in kept["heldout"].items():
        assert metrics[name]["accuracy"] == pytest.approx(acc, abs=0.05)
    assert kept["score"] == pytest.approx(min(kept["heldout"].values()), abs=1e-4)
    applied = rec["findings"][str(both)]
    assert "mislabeled" in applied and (("spurious" in applied) == (rec["chosen"] != "finetune"))
    reason, table = mitigation_summary(ws, model_id)
    assert reason == rec["reason"] and table.kept.sum() == 1 and len(table) == 6
    assert mitigation_summary(ws, base) is None

    # a second mitigation of the run measures on the same held-out members
    before = sets.sort_values(["eval_set", "image_id"]).image_id.tolist()
    _choose(ws, run_id)
    again = ws.df("SELECT image_id FROM eval_sets WHERE eval_set LIKE ? ORDER BY eval_set, image_id",
                  [EVAL_SET_PREFIX + "%"]).image_id.tolist()
    assert again == before


@pytest.mark.parametrize("planted", [0.0, 1.0])
def test_the_better_candidate_on_heldout_is_kept(annotated, monkeypatch, planted):
    """A CoRM candidate planted to score 0 on every held-out slice is never kept; planted at 1 it is."""
    import core.scanner.mitigation_choice as mc

    ws, run_id, _, _ = annotated
    real = mc.score

    def planted_score(tuned, px, labels, set_of):
        out = real(tuned, px, labels, set_of)
        return {k: planted for k in out} if getattr(tuned, "planted", False) else out

    real_corm = mc.corm_fine_tune

    def corm(*args, **kwargs):
        tuned, summary = real_corm(*args, **kwargs)
        tuned.planted = True
        return tuned, summary

    monkeypatch.setattr(mc, "score", planted_score)
    monkeypatch.setattr(mc, "corm_fine_tune", corm)
    _, model_id, record = _choose(ws, run_id)
    plain, corm = record["candidates"]
    assert corm["score"] == planted and not math.isnan(plain["score"])
    worst = min(plain["heldout"], key=plain["heldout"].get)
    corm_wins = planted > plain["score"] + noise_margin(plain["score"], record["heldout_sizes"][worst])
    assert record["chosen"] == (corm["name"] if corm_wins else "finetune")
    assert record["reason"].startswith("CoRM (λ=1, members only) kept" if corm_wins else "Plain fine-tuning kept")
    assert ws.scalar("SELECT method FROM models WHERE model_id = ?", [model_id]) == ("corm" if corm_wins
                                                                                      else "finetune")
    assert ws.scalar("SELECT count(*) FROM models WHERE config LIKE '%\"mitigation\"%'") == 1  # the kept one only


def test_retrain_job_runs_the_choice_and_says_what_it_kept(annotated, tmp_path):
    from jobs import retrain

    ws, run_id, _, _ = annotated
    out = tmp_path / "mitigation.json"
    assert retrain.main(["--workspace", str(ws.root), "--mitigate", "corm", "--corm-choice", "single",
                         "--finetune-epochs", "1", "--batch-size", "32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    mit = report["mitigation"]
    kept = "finetune" if mit["chosen"] == "finetune" else "corm"
    assert set(report["methods"]) == {"baseline", kept}
    assert mit["reason"].endswith(".") and len(mit["candidates"]) == 2
    for name in mit["heldout_eval_sets"]:  # the baseline and the kept model are measured on the held-out sets
        assert f"{name}" in json.dumps(mit) and ws.scalar(
            "SELECT count(*) FROM metrics WHERE eval_set = ? AND model_id IN (?, ?)",
            [name, report["methods"]["baseline"]["model_id"], report["methods"][kept]["model_id"]]) == 2
    with pytest.raises(ValueError, match="between 0 and 1"):
        ChoiceConfig(heldout_share=1.0)
