"""The honest before/after (core.app.story): intervals against known values, verdicts, and the sentence it
tells for the cases the issue found (a shortcut swapped, a small set within noise, a clean fix)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from core.app import story


def test_wilson_interval_matches_known_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605; 0/10 -> 0 to 0.2775
    assert story.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert story.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert story.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert all(math.isnan(v) for v in story.wilson_interval(0, 0))


def test_newcombe_interval_matches_the_paper():
    # Newcombe (1998b), method 10: 56/70 - 48/80 -> 0.0524 to 0.3339; 9/10 - 3/10 -> 0.1705 to 0.8090
    assert story.newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert story.newcombe_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    lo, hi = story.newcombe_interval(5, 10, 5, 10)
    assert lo < 0 < hi and lo == pytest.approx(-hi)


def test_verdicts_and_chance():
    assert story.verdict(0.01, 0.2) == "gain"
    assert story.verdict(-0.3, -0.02) == "regression"
    assert story.verdict(-0.1, 0.2) == "within noise"
    assert story.verdict(math.nan, 0.1) is None
    assert story.chance_level(2) == 0.5 and story.chance_level(10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        story.chance_level(0)
    assert story.at_chance(0.488, 400, 2) and story.at_chance(0.498, 400, 2)
    assert not story.at_chance(0.92, 400, 2) and not story.at_chance(0.60, 400, 2)


def _long(rows):
    return pd.DataFrame(rows, columns=["model_id", "eval_set", "metric", "value", "n"])


# The issue's `make run` demo: DCD fixed the failure by swapping one background shortcut for the other.
SWAP = _long([
    ("base", "test", "accuracy", 0.92, 400), ("dcd", "test", "accuracy", 0.488, 400),
    ("base", "error_heldout", "accuracy", 0.0, 40), ("dcd", "error_heldout", "accuracy", 0.775, 40),
    ("base", "train", "accuracy", 0.92, 600), ("dcd", "train", "accuracy", 0.315, 600),
    ("base", "test", "worst_group_acc", 0.0, 400), ("dcd", "test", "worst_group_acc", 0.2, 400),
    ("base", "test/group=landbird_on_land", "accuracy", 1.0, 100),
    ("dcd", "test/group=landbird_on_land", "accuracy", 0.2, 100),
    ("base", "test/group=waterbird_on_land", "accuracy", 0.0, 100),
    ("dcd", "test/group=waterbird_on_land", "accuracy", 0.8, 100),
    ("base", "test/group=waterbird_on_water", "accuracy", 0.99, 100),
    ("dcd", "test/group=waterbird_on_water", "accuracy", 0.2, 100),
    ("base", "test/group=landbird_on_water", "accuracy", 0.0, 100),
    ("dcd", "test/group=landbird_on_water", "accuracy", 0.75, 100),
])


def test_compare_gives_every_delta_n_interval_and_verdict():
    cmp = story.compare(SWAP, ["base", "dcd"], "base")
    assert list(cmp.columns) == story.COLUMNS
    dcd = cmp[cmp.model_id == "dcd"].set_index(["eval_set", "metric"])
    fail = dcd.loc[("error_heldout", "accuracy")]
    assert fail.delta == pytest.approx(0.775) and fail.n == 40 and fail.images == 31
    assert fail.lo > 0.5 and fail.hi < 0.9 and fail.verdict == "gain" and fail.kind == "failure"
    assert dcd.loc[("test", "accuracy"), "verdict"] == "regression"
    assert dcd.loc[("train", "accuracy"), "verdict"] == "regression"
    assert dcd.loc[("test/group=landbird_on_land", "accuracy"), "kind"] == "group"
    # worst-group accuracy is measured on the worst group's images, not the whole test set
    assert dcd.loc[("test", "worst_group_acc"), "n"] == 100
    base = cmp[cmp.model_id == "base"]
    assert base.delta.isna().all() and base.verdict.isna().all()  # the reference has no delta
    assert story.outcome(cmp, "dcd") == "trade-off"
    assert set(story.swapped_groups(cmp, "dcd").eval_set) == {"test/group=landbird_on_land",
                                                               "test/group=waterbird_on_water"}


def test_the_sentence_says_the_regression_and_the_chance_level():
    cmp = story.compare(SWAP, ["base", "dcd"], "base")
    text = story.tell(cmp, "dcd", reference="base", num_classes=2, names={"dcd": "DCD", "base": "Baseline"})
    assert text.startswith("DCD raised accuracy on the failure from 0% to 77.5% (+31 of 40 images, +77.5 pt ±")
    assert "but test fell from 92% to 48.8%, which is chance for 2 classes" in text
    assert "and 3 more sets fell (worst: landbird on land (test) 100% → 20%)" in text
    assert text.endswith(": it swapped one shortcut for another.")


def test_a_small_gain_is_within_noise():
    # the issue's own small set: +13.3 pt was 4 of 30 images
    long = _long([("a", "error_heldout", "accuracy", 0.1, 30), ("b", "error_heldout", "accuracy", 0.2333, 30),
                  ("a", "test", "accuracy", 0.80, 200), ("b", "test", "accuracy", 0.79, 200)])
    cmp = story.compare(long, ["a", "b"], "a")
    row = cmp[(cmp.model_id == "b") & (cmp.eval_set == "error_heldout")].iloc[0]
    assert row.verdict == "within noise" and row.images == 4
    assert story.delta_text(row).startswith("+13.3 pt ± ") and story.delta_text(row).endswith("(+4 of 30 images)")
    text = story.tell(cmp, "b", reference="a", num_classes=2)
    assert "which is within noise" in text and "nothing else got significantly worse" in text
    assert story.outcome(cmp, "b") == "no change"


def test_a_clean_fix_says_so_and_names_the_sets():
    long = _long([("a", "error_heldout", "accuracy", 0.04, 500), ("b", "error_heldout", "accuracy", 0.80, 500),
                  ("a", "test", "accuracy", 0.52, 1000), ("b", "test", "accuracy", 0.69, 1000)])
    cmp = story.compare(long, ["a", "b"], "a")
    text = story.tell(cmp, "b", reference="a", num_classes=2, failure_name="waterbird on land")
    row = cmp[(cmp.model_id == "b") & (cmp.eval_set == "error_heldout")].iloc[0]
    assert text == ("b raised accuracy on the failure (waterbird on land) from 4% to 80% (n=500, +76.0 pt ± "
                    f"{100 * (row.hi - row.lo) / 2:.1f}) and nothing else got significantly worse (test rose "
                    "from 52% to 69%).")
    assert story.outcome(cmp, "b") == "fix"


def test_a_slice_held_out_set_is_the_failure_and_a_missing_reference_gives_nothing():
    long = _long([("a", "slice:r1:1", "accuracy", 0.1, 50), ("b", "slice:r1:1", "accuracy", 0.5, 50)])
    cmp = story.compare(long, ["a", "b"], "a")
    assert cmp.kind.tolist() == ["failure", "failure"]
    assert "raised accuracy on the failure from 10% to 50%" in story.tell(cmp, "b", reference="a", num_classes=2)
    assert story.compare(long, ["a", "b"], "zzz").empty


def test_describe_model_states_chance():
    text = story.describe_model({"test": (0.498, 400), "error_heldout": (0.02, 200)}, name="Baseline",
                                num_classes=2)
    assert text == ("Baseline gets 49.8% of 400 test images right, which is chance for 2 classes and 2% of "
                    "the 200 images of the failure.")
    assert "no metrics" in story.describe_model({}, name="X", num_classes=2)
