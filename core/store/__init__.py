"""Storage: the workspace (DuckDB file and connections), its schema, embedding vectors, and the job table."""
