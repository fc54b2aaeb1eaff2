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


ROWS_AT_ONCE = 256  # rows of a float image scaled at once


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
    converted by Pillow. Pillow's own conversion of 16-bit and float images clips their values to 0..255. The scaling
    takes one 32-bit copy of the pixels beside Pillow's (once int64 and float64 copies: 0.8 GB at 25 megapixels)."""
    if image.mode in SIXTEEN_BIT or image.mode == 'I':
        values = np.asarray(image)  # Pillow's own buffer: uint16, or int32 for mode I
        low, high = int(values.min()), int(values.max())
        if image.mode == 'I' and (low < 0 or high > 65535):
            raise UnsupportedImage(f"a 32-bit integer image (mode I) with values from {low} to {high} has no agreed "
                                   "scale; send it as 8 or 16 bits")
        # round(v * 255 / 65535) = round(v / 257) in integers, in one 32-bit copy: never exactly a half, as 257 is odd
        scaled = values.astype(np.uint32)
        scaled *= 255
        scaled += 32767
        scaled //= 65535
        return _eight_bit(scaled.astype(np.uint8), mode)
    if image.mode == 'F':
        values = np.asarray(image)  # float32
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if not (np.isfinite(values).all() and 0 <= low and high <= 1):
            raise UnsupportedImage(f"a floating-point image (mode F) must hold values in [0, 1]; this one spans "
                                   f"[{low:g}, {high:g}]")
        gray = np.empty(values.shape, np.uint8)
        for rows in range(0, len(values), ROWS_AT_ONCE):  # in float64, as exact as ever, a slice at a time
            part = values[rows:rows + ROWS_AT_ONCE].astype(np.float64)
            part *= 255
            gray[rows:rows + ROWS_AT_ONCE] = np.rint(part, out=part)
        return _eight_bit(gray, mode)
    try:
        return image if image.mode == mode else image.convert(mode)
    except ValueError as error:
        raise UnsupportedImage(f"images of mode {image.mode} are not supported ({error}); send it as RGB or "
                               "grayscale") from None


def _eight_bit(gray: np.ndarray, mode: str) -> Image.Image:
    image = Image.fromarray(gray, 'L')
    return image if mode == 'L' else image.convert(mode)
