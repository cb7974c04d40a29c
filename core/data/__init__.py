"""Data: the vocabulary (splits, manifest columns), reading manifests, ingest, and image decoding."""
