"""An image file as the model sees it: decoded by Pillow alone, within a pixel limit checked before any large
allocation, and converted from any mode to the model's 8-bit grayscale or RGB with its values scaled, not clipped."""
import io
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.init()
# Every format Pillow decodes itself; EPS would hand the file to Ghostscript, a program, not a decoder.
FORMATS = tuple(name for name in Image.OPEN if name != 'EPS')
SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')


class BadImage(ValueError):
    """Not a whole image that Pillow can read."""


class ImageTooLarge(BadImage):
    """More pixels than allowed."""


class UnsupportedImage(BadImage):
    """An image whose pixel values have no agreed meaning as the model's input."""


def decode(data: bytes, mode: str, max_pixels: Optional[int] = None) -> Image.Image:
    """The image in ``data`` in ``mode`` ('L' or 'RGB'); over ``max_pixels`` it is refused from its header alone."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"the image is {width}x{height}, {width * height:,} pixels, over the limit of "
                                    f"{max_pixels:,} (--max-pixels)")
            image.load()  # decodes now: a truncated file fails here, not later in the batch
            return to_mode(image, mode)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, BadImage):
            raise
        raise BadImage(f"the body is not a readable image ({type(error).__name__}: {error})") from None


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` as 8-bit ``mode``: 16-bit values scaled by 255/65535, floats read as [0, 1], every other mode
    converted by Pillow. Pillow's own conversion of 16-bit and float images clips their values to 0..255."""
    if image.mode in SIXTEEN_BIT or image.mode == 'I':
        values = np.asarray(image, dtype=np.int64)
        if image.mode == 'I' and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImage(f"a 32-bit integer image (mode I) with values from {values.min()} to "
                                   f"{values.max()} has no agreed scale; send it as 8 or 16 bits")
        return _eight_bit(values * 255 / 65535, mode)
    if image.mode == 'F':
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise UnsupportedImage(f"a floating-point image (mode F) must hold values in [0, 1]; this one spans "
                                   f"[{np.nanmin(values):g}, {np.nanmax(values):g}]")
        return _eight_bit(values * 255, mode)
    try:
        return image if image.mode == mode else image.convert(mode)
    except ValueError as error:
        raise UnsupportedImage(f"images of mode {image.mode} are not supported ({error}); send it as RGB or "
                               "grayscale") from None


def _eight_bit(values: np.ndarray, mode: str) -> Image.Image:
    gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), 'L')
    return gray if mode == 'L' else gray.convert(mode)
