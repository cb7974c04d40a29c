"""Train the classifier under debug on the train split; it becomes the current classifier and is evaluated.

    python -m jobs.train --workspace DIR [--classifier resnet18] [--classifier-weights PATH] [--epochs 12]
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(cli.methods_table({"methods": {"baseline": result}}))


def main(argv: list[str] | None = None) -> int:
    return cli.main("train", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
