"""Ingest an image dataset into a workspace (creating the workspace if needed), validating every row.

    python -m jobs.ingest --workspace DIR --manifest data.csv [--classes cat dog]
    python -m jobs.ingest --workspace DIR --imagefolder ROOT

Prints a summary (rows added per split, rejections per reason); the rejected rows are written as CSV under
``artifacts/ingest/``. Exits 1 when no row of the input ends up in the workspace; 0 when it was all there
already (a re-ingest). Paths outside the manifest's folder need --allow-outside. Options: core.runner.dcd_jobs.
"""

from __future__ import annotations

from core.runner import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("ingest", argv)


if __name__ == "__main__":
    raise SystemExit(main())
