"""vlmtune: compose, fine-tune, quantize and evaluate vision-language models.

Kept light on import so that the `vlmtune` command starts at once; the `vlmtune` model type is registered with the
transformers Auto classes when transformers itself is imported (see autoregister.py).
"""

from vlmtune.autoregister import install as _install_auto_classes

_install_auto_classes()
