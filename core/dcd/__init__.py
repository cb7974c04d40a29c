"""Data-Centric Debugging: embedding, the faiss pool index, selection strategies, and the whole pipeline."""
