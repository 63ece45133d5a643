"""Register the `vlmtune` model type with transformers' Auto classes as soon as both are imported.

`import vlmtune` must be enough for `AutoModelForImageTextToText.from_pretrained(<vlmtune checkpoint>)` to work
(never `trust_remote_code`), yet `vlmtune --help` must not pay the seconds that importing transformers' Llava costs.
So registration happens right after the `transformers` package finishes importing (or at once, if it already has):
at that moment no transformers module is half-initialised, so importing Llava from here cannot hit an import cycle.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_registered = False


def register() -> None:
    """Register the vlmtune config, model and processor classes (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from vlmtune.model.modeling import (
        VlmtuneConfig,
        VlmtuneForConditionalGeneration,
        VlmtuneModel,
        VlmtuneProcessor,
    )

    AutoConfig.register("vlmtune", VlmtuneConfig)
    AutoModel.register(VlmtuneConfig, VlmtuneModel)
    AutoModelForImageTextToText.register(VlmtuneConfig, VlmtuneForConditionalGeneration)
    AutoProcessor.register(VlmtuneConfig, VlmtuneProcessor)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of the `transformers` package so that `register()` runs after it.

    Availability checks (`importlib.util.find_spec("transformers")`) also land here without importing anything,
    so the finder stays installed until the package is actually executed.
    """

    _resolving = False

    def find_spec(self, name, path=None, target=None):
        if name != "transformers" or self._resolving:
            return None
        self._resolving = True  # find the real spec through the remaining finders
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._resolving = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Called by `vlmtune/__init__.py`."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())
