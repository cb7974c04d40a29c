"""Annotate a benchmark's slices from its ground truth, as a person would from the Attribution Mosaics.

    python -m jobs.annotate_demo --workspace DIR [--run-id ID] [--min-purity 0.6] [--json OUT]

See core.scenarios.annotate_from_truth. Only for benchmarks with ground truth; on real data a person
annotates on the Slices page.
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    for d in result["annotations"]:
        print(f"slice {d['slice_id']} (rank {d['rank']}, {d['group']}): {d['kind']}")


def main(argv: list[str] | None = None) -> int:
    return cli.main("annotate_demo", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
