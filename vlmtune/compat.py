"""Gaps between the libraries on this project's CPU machines: no torchvision, a bitsandbytes warning to explain.

transformers 5.24's video processors (e.g. `Qwen2VLVideoProcessor`) need torchvision, and processors whose `__init__`
takes a `video_processor` (Qwen2-VL, Qwen2.5-VL) then fail to build, save or load even for images only.
`allow_missing_video_processor()` lets such processors have no video processor when torchvision is missing: images
work, videos raise. With torchvision installed it changes nothing. It patches the three `ProcessorMixin` steps that
fail (the argument check, `save_pretrained`, the loader's video slot) and says so once, when a processor first goes
without its video processor. `explain_bitsandbytes_kernels_message()` adds what one bitsandbytes warning means.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("vlmtune")

_PATCHED = False


def allow_missing_video_processor() -> None:
    """Idempotent: without torchvision, processors accept, save and load a missing (None) video processor."""
    global _PATCHED
    from transformers.utils import is_torchvision_available

    if _PATCHED or is_torchvision_available():
        return
    _PATCHED = True
    from transformers import ProcessorMixin, processing_utils

    check = ProcessorMixin.check_argument_for_proper_class

    @functools.wraps(check)
    def check_argument(self, argument_name, argument):
        if argument is None and "video_processor" in argument_name:
            _say_once()
            return None
        return check(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check_argument

    save = ProcessorMixin.save_pretrained

    @functools.wraps(save)
    def save_pretrained(self, *args, **kwargs):
        # Upstream saves every attribute `get_attributes()` names; leave the missing ones out for this one call.
        missing = [a for a in type(self).get_attributes() if getattr(self, a, "") is None]
        if not missing:
            return save(self, *args, **kwargs)
        self.get_attributes = lambda: [a for a in type(self).get_attributes() if a not in missing]
        try:
            return save(self, *args, **kwargs)
        finally:
            del self.get_attributes

    ProcessorMixin.save_pretrained = save_pretrained
    # ProcessorMixin.from_pretrained loads each sub-processor through this lazy {modality: auto class} mapping; its
    # AutoVideoProcessor is a torchvision-requiring placeholder here, so point the video slot at one that gives None.
    mapping = processing_utils.MODALITY_TO_AUTOPROCESSOR_MAPPING
    mapping._MAPPING_NAMES = {**mapping._MAPPING_NAMES, "video_processor": (__name__, "NoVideoProcessor")}


@functools.cache
def _say_once() -> None:
    log.info("torchvision is not installed: processors with a video processor (Qwen2-VL, Qwen2.5-VL) run without one; "
             "images work, videos raise")


class NoVideoProcessor:
    """Stands in for AutoVideoProcessor without torchvision: there is no video processor to load."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> None:
        _say_once()
        return None


class _ExplainKernelsMessage(logging.Filter):
    """Adds to bitsandbytes' warning what it means here; every record still passes."""

    MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.MESSAGE):
            record.msg = (f"{record.msg}\n(vlmtune: harmless. `kernels` would download an optional faster CPU 4-bit "
                          "matmul from the Hugging Face Hub; without it bitsandbytes runs its own CPU code, which is "
                          "correct. Nothing to install for an offline run.)")
        return True


def explain_bitsandbytes_kernels_message() -> None:
    """bitsandbytes 0.50 warns once, when imported (peft imports it) on a CPU with AVX512-BF16, that it could not load
    an optional kernel through the `kernels` package. Its advice (`pip install kernels`) does not help offline; this
    adds to that one message what it means, and hides nothing. Idempotent; called before anything imports peft."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _ExplainKernelsMessage) for f in logger.filters):
        logger.addFilter(_ExplainKernelsMessage())
