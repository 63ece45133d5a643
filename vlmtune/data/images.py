"""Open an image for training or evaluation: every failure a `DataError`, every mode converted to 8-bit RGB.

PIL opens what users actually have (CMYK JPEGs, 16-bit PNGs, palettes with transparency, grayscale scans), but a
plain `.convert("RGB")` turns a 16-bit image white and transparent pixels black. This module does the conversions
explicitly and turns missing, corrupt, truncated and decompression-bomb files into one clear error each.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataError

MAX_PIXELS = 89_478_485  # PIL's default warning threshold: larger images are refused as decompression bombs


def _to_rgb(image):
    """8-bit RGB; transparency composited on white, 16/32-bit and float grayscale rescaled rather than clipped."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def check_image_header(source: Any, where: str, max_pixels: int = MAX_PIXELS) -> None:
    """Cheap up-front check of one image (a path or bytes): it exists, PIL recognises it, it is not a
    decompression bomb. PIL images pass.

    Decoding (which catches truncation) happens when the sample is used, through `load_image`, with the same kind
    of error; `vlmtune data check` and `data.verify_images=full` decode every image up front.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(source, str | bytes):
        return
    name = "image bytes" if isinstance(source, bytes) else f"image file {source}"
    if isinstance(source, str) and not Path(source).is_file():
        raise DataError(f"{where}: {name} does not exist (check the path and data.image_root)", "missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
                width, height = opened.size
    except Image.DecompressionBombError:
        width = height = max_pixels + 1  # far above PIL's own limit: reported below
    except UnidentifiedImageError as err:
        raise DataError(f"{where}: {name} is not an image PIL can read (corrupt or unsupported format)",
                        "corrupt_image") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: {name} is corrupt ({err})", "corrupt_image") from err
    if width * height > max_pixels:
        raise DataError(f"{where}: {name} has {width}x{height} pixels, more than data.max_image_pixels="
                        f"{max_pixels}: a decompression bomb, or downscale it first", "decompression_bomb")


def load_image(source: Any, where: str, max_pixels: int = MAX_PIXELS):
    """An 8-bit RGB PIL image from a path, bytes, a datasets `{"bytes", "path"}` dict or a PIL image.

    `where` names the file and sample for the error message.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, dict):  # a datasets Image() value that was not decoded
        source = source.get("bytes") or source.get("path")
    name = "image bytes" if isinstance(source, bytes) else f"image file {source}"
    if not isinstance(source, bytes) and not Path(str(source)).is_file():
        raise DataError(f"{where}: {name} does not exist (check the path and data.image_root)", "missing_image")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL warns above this (an error here) from the header, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.load()  # decode now: truncated files fail here, not inside a collator
                return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{where}: {name} is too large to decode safely ({err}); downscale it or raise "
                        "data.max_image_pixels if it is genuine", "decompression_bomb") from err
    except UnidentifiedImageError as err:
        raise DataError(f"{where}: {name} is not an image PIL can read (corrupt or unsupported format)",
                        "corrupt_image") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: {name} is truncated or corrupt ({err}); re-export or remove it",
                        "corrupt_image") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
