"""Compute attribution maps and attribution-weighted vectors of the classifier (AttributionScanner).

    python -m jobs.attribute --workspace DIR [--classifier-id ID] [--attribution gradcam|integrated_gradients]
        [--target label|pred] [--heatmap-size 7] [--splits train test error_heldout] [--attr-batch-size 64]

Grad-CAM (captum LayerGradCam) runs on the classifier's last conv block; ViTs get Grad-CAM on tokens.
"""

from __future__ import annotations

from core.runner import cli


def report(s: dict) -> None:
    print(f"attributed {s['n']} images of {s['model_id']} with {s['method']} ({s['precision_reason']}) "
          f"in {s['seconds']} s")


def main(argv: list[str] | None = None) -> int:
    return cli.main("attribute", argv, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
