"""Make a debug-train selection: DCD retrieval for the error sample, or a baseline.

    python -m jobs.select --workspace DIR --method dcd [--embedder-id ID] [--neighbours 20] [--budget 500]
                          [--label-policy agree|weak|source] [--name NAME]
    python -m jobs.select --workspace DIR --method random --budget 500
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(f"selection {result['selection_id']} ({result['name']}): {result['n']} images by {result['method']}")


def main(argv: list[str] | None = None) -> int:
    return cli.main("select", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
