"""Generate a demo DCD scenario into a new workspace and run the whole loop on it.

    python -m jobs.demo --workspace DIR --json OUT.json                  # Waterbirds-like synthetic benchmark
    python -m jobs.demo --workspace DIR --dataset cifar10 --assets DIR   # real CIFAR-10 images (or $DCD_ASSETS)
    python -m jobs.demo --workspace DIR --size small                     # quick version (make run)

Every pipeline flag (classifier, embedder, neighbours, budget, epochs...) can be given; the defaults depend on
the dataset (core.scenarios.demos).
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    if "methods" in result:
        print(cli.methods_table(result))


def main(argv: list[str] | None = None) -> int:
    return cli.main("demo", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
