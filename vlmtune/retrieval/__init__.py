"""Embeddings and search: what a dual encoder's shared space is for (retrieval, retrieval-augmented VQA)."""
