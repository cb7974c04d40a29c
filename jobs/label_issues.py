"""Find label issues in the train labels and the pool's weak labels (out-of-sample probabilities, the noise posterior).

    python -m jobs.label_issues --workspace DIR [--embedder-id ID] [--splits train pool] [--folds 5] [--seed 0]
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    per_split = ", ".join(f"{s} {v['n_flagged']} of {v['n_scored']}" for s, v in result["splits"].items())
    print(f"label issues ({result['embedder_id']}, {result['folds']} folds): flagged {per_split}")


def main(argv: list[str] | None = None) -> int:
    return cli.main("label_issues", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
