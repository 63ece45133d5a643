"""vlmtune: compose, fine-tune, quantize and evaluate vision-language models.

Kept light on import so that the `vlmtune` command starts at once.
"""
