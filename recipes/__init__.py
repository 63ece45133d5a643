"""Thin Hydra entry points, one per job; `vlmtune <recipe>` runs them as scripts."""
