"""Evaluate classifiers: predict on the evaluation splits and store accuracy per split and group.

    python -m jobs.evaluate --workspace DIR [--classifier-id ID ...]   (default: every classifier)
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(cli.methods_table({"methods": result["models"]}))


def main(argv: list[str] | None = None) -> int:
    return cli.main("evaluate", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
