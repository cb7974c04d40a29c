"""Run the whole DCD loop on an ingested workspace and report every method.

    python -m jobs.pipeline --workspace DIR --json OUT.json
        [--classifier resnet18 | --classifier-id ID | --classifier-weights PATH]
        [--embedder vit_small_patch16_224.dino --embedder-weights PATH] [--neighbours K] [--budget B]

Writes {"methods": {"baseline"|"dcd"|"random"|"all_pool"|"error_sample_only":
                    {"test_acc", "error_heldout_acc", "n_added", ...}}, ...}.
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    print(cli.methods_table(result))


def main(argv: list[str] | None = None) -> int:
    return cli.main("pipeline", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
