"""vlmtune: compose, fine-tune, quantize and evaluate vision-language models.

`import vlmtune` imports neither torch nor transformers, so that the `vlmtune` command answers at once.
"""


def register_auto_classes() -> None:
    """Let transformers' Auto classes load `vlmtune` checkpoints (model type `vlmtune`), never `trust_remote_code`.

    vlmtune's own loaders call it; a script of yours calls it once before `AutoConfig` / `AutoProcessor` /
    `AutoModelForImageTextToText.from_pretrained(<vlmtune checkpoint>)`. It imports transformers' Llava (seconds).
    Registering again is harmless.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from vlmtune.model.modeling import (
        VlmtuneConfig,
        VlmtuneForConditionalGeneration,
        VlmtuneModel,
        VlmtuneProcessor,
    )

    AutoConfig.register("vlmtune", VlmtuneConfig, exist_ok=True)
    AutoModel.register(VlmtuneConfig, VlmtuneModel, exist_ok=True)
    AutoModelForImageTextToText.register(VlmtuneConfig, VlmtuneForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VlmtuneConfig, VlmtuneProcessor, exist_ok=True)
