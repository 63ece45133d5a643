"""Work-arounds for gaps between the libraries on machines without torchvision (this project's CPU machines).

transformers 5.24's video processors (e.g. `Qwen2VLVideoProcessor`) import torchvision, and processors whose
`__init__` takes a `video_processor` (Qwen2-VL, Qwen2.5-VL) then fail to build or load even for images only.
`allow_missing_video_processor()` lets such processors run with `video_processor=None` when torchvision is missing:
images work, videos raise. With torchvision installed it does nothing.
"""

from __future__ import annotations

import functools

_PATCHED = False


def allow_missing_video_processor() -> None:
    """Idempotent: without torchvision, processors accept and load a missing (None) video processor."""
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    from transformers import ProcessorMixin, processing_utils

    check = ProcessorMixin.check_argument_for_proper_class

    @functools.wraps(check)
    def check_argument(self, argument_name, argument):
        if argument is None and "video_processor" in argument_name:
            return None
        return check(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check_argument

    save, to_dict = ProcessorMixin.save_pretrained, ProcessorMixin.to_dict

    @functools.wraps(save)
    def save_pretrained(self, *args, **kwargs):
        missing = [a for a in type(self).get_attributes() if getattr(self, a, "") is None]
        if not missing:
            return save(self, *args, **kwargs)
        self.get_attributes = lambda: [a for a in type(self).get_attributes() if a not in missing]
        try:
            return save(self, *args, **kwargs)
        finally:
            del self.get_attributes

    @functools.wraps(to_dict)
    def to_dict_without_missing(self):
        return {k: v for k, v in to_dict(self).items() if not (v is None and "video_processor" in k)}

    ProcessorMixin.save_pretrained = save_pretrained
    ProcessorMixin.to_dict = to_dict_without_missing
    # ProcessorMixin.from_pretrained loads each sub-processor through this lazy {modality: auto class} mapping; its
    # AutoVideoProcessor is a torchvision-requiring placeholder here, so point the video slot at one that gives None.
    mapping = processing_utils.MODALITY_TO_AUTOPROCESSOR_MAPPING
    mapping._MAPPING_NAMES = {**mapping._MAPPING_NAMES, "video_processor": (__name__, "NoVideoProcessor")}


class NoVideoProcessor:
    """Stands in for AutoVideoProcessor without torchvision: there is no video processor to load."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> None:
        return None
