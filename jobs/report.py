"""Write a slice's report: one self-contained HTML page with its mosaic, annotation, fix and before/after.

    python -m jobs.report --workspace DIR --slice RUN:RANK [--out report.html]
    python -m jobs.report --workspace DIR --slice latest:1
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    fixes = f"{result['n_fixes']} fix(es)" if result["n_fixes"] else "no fix yet"
    print(f"report of slice {result['rank']} of {result['run_id']} ({fixes}): {result['path']}")


def main(argv: list[str] | None = None) -> int:
    return cli.main("report", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
