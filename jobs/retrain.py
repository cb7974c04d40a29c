"""Fine-tune the classifier on train + a debug-train selection, then evaluate the new model.

    python -m jobs.retrain --workspace DIR --selection-id ID [--classifier-id ID] [--finetune-epochs 6]
    python -m jobs.retrain --workspace DIR --mitigate corm [--run-id ID] [--corm-lambda 1] [--corm-sigma 1]
        [--mislabeled relabel|drop|keep] --json OUT

``--mitigate corm`` fine-tunes with Core Risk Minimization from the slice annotations (core.scanner.mitigation)
and writes {"methods": {"baseline": {"test_acc", "worst_group_acc", ...}, "corm": {...}}, "corm": {summary}}.
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(cli.methods_table(result))


def main(argv: list[str] | None = None) -> int:
    return cli.main("retrain", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
