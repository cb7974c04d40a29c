"""Benchmark: every label-issue rule on the field's label-error benchmark inputs.

    python -m bench.label_bench --inputs DIR [--result FILE]

``DIR`` holds one folder per input with ``pred_probs.npy`` (N x K out-of-fold probabilities of a model
cross-validated on the noisy labels), ``noisy_labels.npy`` (the labels it saw) and ``true_labels.npy``; the
real assets' ``label-bench/`` folder is such a DIR (CIFAR-10N ``aggre`` and ``worst`` labels, ResNet-18 and
EfficientNet-B1, from cleanlab's label-error-detection benchmarks). For each input and rule: how many
labels it flags, precision, recall and F1 against the true labels; and the AUROC with which each score ranks
the wrong labels first. The rules:

- ``default``: core.dcd.label_noise.find_issues as it is called on probabilities from elsewhere (the noise
  posterior, the probabilities read as a model of the given labels);
- ``posterior_trusted``: the same EM with the probabilities read as the true class's (the rule of #15);
- cleanlab's ``find_label_issues`` rules (``prune_by_noise_rate`` ... ``predicted_neq_given``).

Scores: the default's (the posterior probability that the label is right), the old rule's, and cleanlab's
``self_confidence`` and ``normalized_margin`` label-quality scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.dcd.label_noise import CLEANLAB_FILTERS, find_issues

FILES = ("pred_probs.npy", "noisy_labels.npy", "true_labels.npy")


def inputs_in(folder: Path) -> list[Path]:
    """The benchmark inputs under ``folder`` (sub-folders holding the three files), sorted by name."""
    found = sorted(p for p in Path(folder).iterdir() if p.is_dir() and all((p / f).is_file() for f in FILES))
    if not found:
        raise FileNotFoundError(f"{folder} holds no label-bench input (a folder with {', '.join(FILES)})")
    return found


def quality(flagged: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    tp = int((flagged & wrong).sum())
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(wrong.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n_flagged": int(flagged.sum()), "precision": precision, "recall": recall, "f1": f1}


def auroc(wrong: np.ndarray, suspicion: np.ndarray) -> float:
    """The chance that a wrong label is more suspect than a right one (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(suspicion)
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    return float((ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right))


def run_input(folder: Path) -> dict[str, Any]:
    """Every rule and score on one input."""
    from cleanlab.rank import get_label_quality_scores

    probs = np.load(folder / "pred_probs.npy")
    labels = np.load(folder / "noisy_labels.npy").astype(np.int64)
    wrong = labels != np.load(folder / "true_labels.npy")
    rules, scores = {}, {}
    t = time.perf_counter()
    flagged, score, _ = find_issues(labels, probs)
    rules["default"] = {**quality(flagged, wrong), "seconds": time.perf_counter() - t}
    scores["default"] = auroc(wrong, -score)
    flagged, score, _ = find_issues(labels, probs, fitted_on="trusted")
    rules["posterior_trusted"] = quality(flagged, wrong)
    scores["posterior_trusted"] = auroc(wrong, -score)
    for name in CLEANLAB_FILTERS:
        t = time.perf_counter()
        rules[name] = {**quality(find_issues(labels, probs, filter_by=name)[0], wrong),
                       "seconds": time.perf_counter() - t}
    for method in ("self_confidence", "normalized_margin"):
        scores[method] = auroc(wrong, -get_label_quality_scores(labels, probs, method=method))
    best = max(CLEANLAB_FILTERS, key=lambda r: rules[r]["f1"])
    return {"n": len(labels), "n_wrong": int(wrong.sum()), "rules": rules, "auroc": scores,
            "best_cleanlab": best, "default_minus_best_cleanlab_f1": rules["default"]["f1"] - rules[best]["f1"]}


def run(folder: Path) -> dict[str, Any]:
    out = {folder_.name: run_input(folder_) for folder_ in inputs_in(folder)}
    gaps = [r["default_minus_best_cleanlab_f1"] for r in out.values()]
    return {"inputs": out, "worst_gap_f1": min(gaps),
            "mean_f1_default": float(np.mean([r["rules"]["default"]["f1"] for r in out.values()])),
            "mean_f1_best_cleanlab": float(np.mean([r["rules"][r["best_cleanlab"]]["f1"] for r in out.values()]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=Path, required=True, help="the label-bench folder")
    p.add_argument("--result", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.inputs)
    from bench.common import peak_rss_bytes

    result["peak_rss_bytes"] = peak_rss_bytes()
    text = json.dumps(result, indent=2)
    if args.result:
        args.result.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
