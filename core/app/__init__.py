"""What the dashboard shows: read-only queries, charts and reports over a workspace (no Streamlit here)."""
