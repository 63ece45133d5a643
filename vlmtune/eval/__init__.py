"""Evaluation: batched generation across processes, scoring, benchmark metrics."""
