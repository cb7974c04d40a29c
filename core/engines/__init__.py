"""Where per-image work runs: in the job's own process (``local``) or on a Ray cluster (``ray``)."""
