"""Embed the workspace's images with a frozen embedder and (re)build the pool's faiss index.

    python -m jobs.embed --workspace DIR [--embedder vit_small_patch16_224.dino --embedder-weights PATH]
                         [--splits error_sample pool] [--only-missing]
"""

from __future__ import annotations

from core.runner import cli


def report(result: dict) -> None:
    line = f"embedded {result['n_embedded']} images with {result['embedder_id']}"
    if "index" in result:
        line += f"; pool index {result['index']['type']}, recall@k {result['index']['recall_at_k']:.3f}"
    print(line)


def main(argv: list[str] | None = None) -> int:
    return cli.main("embed", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
