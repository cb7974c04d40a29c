"""Find error slices: cluster attribution-weighted vectors, rank the slices, draw their mosaics.

    python -m jobs.slices --workspace DIR --json OUT [--slices N | --slices-min 6 --slices-max 24] [--attribute]
        [--pred-weight 0.5] [--error-weight 0.5] [--mosaic-layout grid|confusion]

Writes {"run_id", "model_id", "n_slices", "slices": [{"rank", "size", "accuracy", "score", "group", "purity",
"mislabeled", ...}]}; group / purity / mislabeled come from ground truth where the workspace has it (they are
never used to find the slices). With --attribute (or when the model has no attributions yet) the
attributions are computed first.
"""

from __future__ import annotations

from core.runner import cli

COLUMNS = [("rank", "rank", ""), ("size", "size", ""), ("accuracy", "acc", ".2f"), ("score", "score", ".2f"),
           ("group", "group", ""), ("purity", "purity", ".2f"), ("mislabeled", "mislab", "")]


def report(result: dict) -> None:
    print(cli.format_table(result["slices"], COLUMNS))


def main(argv: list[str] | None = None) -> int:
    return cli.main("slices", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
