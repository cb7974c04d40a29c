"""Name a failure to fix: a confusion cell of a classifier, or images a person picked.

    python -m jobs.failure --workspace DIR --cell TRUE:PRED [--splits test error_heldout] [--classifier-id ID]
    python -m jobs.failure --workspace DIR --images 12 40 41 [--name NAME]

Prints the failure's id (give it to jobs.select and jobs.pipeline as --failure ID) and its parts.
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(f"failure {result['failure_id']} ({result['name']}): {result['n_query']} images to search with, "
          f"{result['n_heldout']} held out as eval set {result['eval_set']}")


def main(argv: list[str] | None = None) -> int:
    return cli.main("failure", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
