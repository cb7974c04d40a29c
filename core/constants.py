"""The project's fixed vocabulary, declared once: splits, manifest columns, metadata kinds, statuses, annotation
kinds."""

from __future__ import annotations

#: ``train`` and ``test`` as usual; ``error_sample`` is ``E_sample`` (the few images of the failure DCD
#: retrieves for); ``error_heldout`` is where success on the failure is measured; ``pool`` is the large
#: weakly labeled set F that debug-train images come from; ``uploaded`` holds images a person uploaded in
#: the app as a failure's query part, labelled (core.dcd.failure.failure_from_upload: never train, test or pool).
SPLITS = ("train", "test", "error_sample", "error_heldout", "pool", "uploaded")
POOL = "pool"
UPLOADED = "uploaded"

#: The evaluation sets, in the order reports show them.
EVAL_SPLITS = ("test", "error_heldout", "error_sample", "train")

#: Columns of a manifest (CSV or Parquet): ``path, label, split`` are required, the rest optional.
MANIFEST_COLUMNS = ("path", "label", "split", "weak_label", "group", "true_label")
REQUIRED_COLUMNS = ("path", "label", "split")
LABEL_COLUMNS = ("label", "weak_label", "true_label")
#: What a manifest's other columns (image metadata: site, camera, date ...) are kept as, one kind per column.
METADATA_KINDS = ("text", "number", "date")

SELECTION_STATUSES = ("proposed", "accepted", "rejected")
ANNOTATION_KINDS = ("core", "spurious", "mislabeled", "other")
