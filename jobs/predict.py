"""Store a classifier's predictions (class, probabilities, loss, correct) for the given splits.

    python -m jobs.predict --workspace DIR [--classifier-id ID] [--splits train test error_sample error_heldout]
"""

from __future__ import annotations

from core.runner import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("predict", argv)


if __name__ == "__main__":
    raise SystemExit(main())
