"""What tells a slice apart (core.scanner.slice_facts): planted values, measures and names that differ."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.app.names import describe_slice, slice_names
from core.scanner.image_measures import image_properties
from core.scanner.slice_facts import (
    FACTS_VERSION,
    facts_for,
    measure_fact,
    name_facts,
    naming_facts,
    slice_facts,
    value_facts,
)


def _members(rng: np.random.Generator) -> pd.DataFrame:
    """Three slices of one cell (label 0 taken for 1): slice 1 is mostly site=B, slice 2 darker than the rest
    of the cell, slice 3 neither; slice 4 (label 1, recognised) brighter than the run; slices 5 and 6 (label 1 taken for 0) are
    drawn alike."""
    rows = []
    for sid, n, label, pred in [(1, 40, 0, 1), (2, 40, 0, 1), (3, 40, 0, 1), (4, 60, 1, 1), (5, 40, 1, 0),
                                (6, 40, 1, 0)]:
        for _ in range(n):
            site = "B" if (sid == 1 and rng.random() < 0.9) or rng.random() < 0.1 else "A"
            bright = rng.normal({2: 0.2, 4: 0.8}.get(sid, 0.5), 0.05)
            rows.append({"slice_id": sid, "label": label, "pred": pred, "site": site, "brightness": bright,
                         "confidence": rng.uniform(0.5, 0.9)})
    return pd.DataFrame(rows)


def test_a_planted_value_and_a_planted_measure_are_found_against_the_rest_of_the_cell():
    members = _members(np.random.default_rng(0))
    kw = dict(value_columns=["site"], measure_columns=["brightness", "confidence"], class_names=["cat", "dog"])
    first = facts_for(members, 1, (0, 1), **kw)
    assert first[0].kind == "value" and (first[0].name, first[0].value) == ("site", "B")
    assert first[0].against == "cell" and first[0].share > 0.8 and first[0].base < 0.3
    assert "site=B" in first[0].text and "x the cell" in first[0].text
    second = facts_for(members, 2, (0, 1), **kw)
    assert (second[0].name, second[0].value, second[0].short) == ("brightness", "lower", "darker")
    assert second[0].share > 0.9 and "below the cell's median brightness" in second[0].text
    third = {(f.name, f.value) for f in facts_for(members, 3, (0, 1), **kw)}
    assert ("site", "B") not in third and ("brightness", "lower") not in third  # the others' facts are not its
    assert facts_for(members, 5, (1, 0), **kw) == []  # drawn like the rest of its cell: no fact is made up


def test_a_slice_that_is_its_whole_cell_is_compared_with_the_rest_of_the_run():
    members = _members(np.random.default_rng(1))
    facts = facts_for(members, 4, (1, 1), value_columns=["site"], measure_columns=["brightness"],
                      class_names=["cat", "dog"])
    assert [(f.name, f.value, f.against) for f in facts] == [("brightness", "higher", "run")]


def test_value_facts_need_both_a_gain_and_a_lift():
    even = pd.Series(["A"] * 50 + ["B"] * 50)
    assert value_facts("site", even, even, "cell") == []
    assert value_facts("site", pd.Series(["A"] * 9 + [None]), pd.Series(["A"] * 8 + ["B"] * 2), "cell") == []
    only = value_facts("site", pd.Series(["C"] * 6 + ["A"] * 4), pd.Series(["A"] * 10), "cell")
    assert [f.value for f in only] == ["C"] and "none in the rest of the cell" in only[0].text


def test_measure_facts_say_the_direction_and_ignore_overlap():
    rng = np.random.default_rng(2)
    high = measure_fact("sharpness", rng.normal(2, 0.3, 50), rng.normal(1, 0.3, 80), "cell")
    assert high is not None and high.value == "higher" and high.short == "sharper" and high.score > 0.9
    assert measure_fact("sharpness", rng.normal(1, 1, 50), rng.normal(1, 1, 80), "cell") is None
    assert measure_fact("sharpness", np.array([np.nan, 1.0]), rng.normal(1, 1, 80), "cell") is None


def test_image_properties_rank_planted_images():
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 255, (32, 32, 3))
    dark, bright = np.full((32, 32, 3), 30), np.full((32, 32, 3), 220)
    grey_noise = np.repeat(noise[..., :1], 3, axis=2)
    props = image_properties(np.stack([dark, bright, noise, grey_noise]).astype(np.uint8))
    assert props.brightness[0] < props.brightness[1]
    assert props.contrast[0] < 1e-6 < 0.1 < props.contrast[2]
    assert props.sharpness[2] > 0.01 > 1e-6 > props.sharpness[0]
    assert props.colourfulness[3] < 1e-6 < 0.1 < props.colourfulness[2]


def test_names_in_one_cell_differ_by_a_fact_no_earlier_slice_of_it_uses():
    members = _members(np.random.default_rng(4))
    members.loc[members.slice_id == 2, "site"] = "B"  # slices 1 and 2 both mostly site=B now
    kw = dict(value_columns=["site"], measure_columns=["brightness"], class_names=["cat", "dog"])
    facts = {sid: facts_for(members, sid, (0, 1), **kw) for sid in (1, 2, 3)}
    chosen = name_facts({1: (0, 1), 2: (0, 1), 3: (0, 1)}, facts, [1, 2, 3])
    keys = {sid: [(f.name, f.value) for f in fs] for sid, fs in chosen.items()}
    assert set(keys) == {1, 2, 3} and len({tuple(k) for k in keys.values()}) == 3
    assert ("brightness", "lower") in keys[2]
    # a fact an earlier slice of the cell is named by is kept, and the next unused one is added
    same = {1: facts[2][:1], 2: facts[2][:1] + [f for f in facts[1] if f.name == "brightness"]}
    both = name_facts({1: "c", 2: "c"}, same, [1, 2])
    assert both[1] == facts[2][:1] and both[2][0] == facts[2][0] and len(both[2]) == 2
    assert both[2][1].name == "brightness" and (both[2][1].name, both[2][1].value) != (both[1][0].name, both[1][0].value)
    row = {"confusion": [[0, 40], [0, 0]], "rank": 1, "size": 40}
    assert describe_slice(row, ["cat", "dog"], both[2]) == f"cat taken for dog: {both[2][0].short}, {both[2][1].short}"


def test_a_slice_run_stores_its_facts_and_names_slices_by_them(sliced_copy):
    ws, _report, sliced = sliced_copy
    run_id = sliced["run_id"]
    stored = ws.artifacts / "slices" / run_id / "facts.json"
    assert stored.is_file()  # written by the slices job
    facts = slice_facts(ws, run_id)
    sizes = ws.df("SELECT slice_id FROM slices WHERE run_id = ?", [run_id])
    assert set(facts) == set(sizes.slice_id.astype(int))
    # the tiny data's planted groups: a slice mostly of one group, against the rest of its cell or run, says so
    members = ws.df("SELECT m.slice_id, i.group_name FROM slice_members m JOIN images i USING (image_id) "
                    "WHERE m.run_id = ?", [run_id])
    told = {(sid, f.value) for sid, fs in facts.items() for f in fs if f.name == "group"}
    for sid, part in members.groupby("slice_id"):
        share = part.group_name.value_counts(normalize=True)
        rest = members[members.slice_id != sid].group_name.value_counts(normalize=True)
        top = share.index[0]
        if share.iloc[0] >= 0.8 and rest.get(top, 0.0) <= 0.3:
            assert (int(sid), top) in told
    names = slice_names(ws, run_id)
    chosen = naming_facts(ws, run_id)
    for sid, facts_named in chosen.items():
        assert all(f.short in names[sid] for f in facts_named)
    # slices of one cell never share their name's description where facts tell them apart
    rows = ws.df("SELECT slice_id, rank, size, confusion, dominant_label, dominant_pred FROM slices WHERE run_id = ?",
                 [run_id])
    described = [describe_slice(r._asdict(), ws.class_names(), chosen.get(int(r.slice_id)))
                 for r in rows.itertuples(index=False)]
    told_apart = [d for d, r in zip(described, rows.itertuples(index=False)) if int(r.slice_id) in chosen]
    assert len(told_apart) == len(set(told_apart))
    # read back as stored, not recomputed
    stored.write_text(json.dumps({"version": FACTS_VERSION, "slices": {}}))
    assert slice_facts(ws, run_id) == {}


def test_a_slice_holding_a_planted_metadata_value_is_named_by_it(sliced_copy):
    """The tiny data plants ``site`` (text: north on dark backgrounds, south on light) and ``exposure``
    (number: 40-44 dark, 200-204 light). With the planted groups removed, a slice mostly of one site (against
    the rest of its cell or run) is named by that site or by its exposure, the same planted fact."""
    ws, _report, sliced = sliced_copy
    run_id = sliced["run_id"]
    with ws.write() as con:
        con.execute("UPDATE images SET group_name = NULL")
    (ws.artifacts / "slices" / run_id / "facts.json").unlink()
    facts, chosen = slice_facts(ws, run_id), naming_facts(ws, run_id)
    sites = ws.df("SELECT m.slice_id, t.text_value AS site FROM slice_members m JOIN image_metadata t "
                  "ON t.image_id = m.image_id AND t.column_name = 'site' WHERE m.run_id = ?", [run_id])
    named = 0
    for sid, part in sites.groupby("slice_id"):
        share = part.site.value_counts(normalize=True)
        rest = sites[sites.slice_id != sid].site.value_counts(normalize=True)
        if share.iloc[0] >= 0.8 and rest.get(share.index[0], 0.0) <= 0.3:
            told = {(f.name, f.value) for f in facts[int(sid)]}
            assert ("site", share.index[0]) in told
            assert chosen[int(sid)][0].name in ("site", "exposure")
            named += 1
    assert named >= 1  # the planted column does hold a slice here
    assert all(f.name != "group" for fs in facts.values() for f in fs)
