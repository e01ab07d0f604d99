"""Decoding and encoding face images: every image enters the pipeline through `decode_image` as RGB uint8.

Greyscale, palette, RGBA and CMYK are converted to RGB; EXIF orientation is applied, so pixel (and landmark)
coordinates refer to the upright image. A truncated or corrupt file raises `CorruptImageError` naming where
the bytes came from; PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (else a cut-off JPEG decodes as
grey rows instead of failing), so decoding refuses to run if something turned it on.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

# EXIF orientations 5..8 swap width and height (transpose, rotate 90/270, transverse).
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}
_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N"}


class CorruptImageError(ValueError):
    """An image that cannot be decoded; the message starts with `where` (a file path or "train.rec record 17").

    Constructible from one string, so a DataLoader worker re-raises it in the main process as this same type.
    """

    def __init__(self, where: str, reason: str | None = None) -> None:
        super().__init__(where if reason is None else f"{where}: cannot decode image ({reason})")
        self.where = where


def _check_truncation_policy(where: str) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            f"PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True somewhere; facerepro treats truncated images "
            f"as errors, so it refuses to decode {where} (set it back to False)"
        )


def _open(data: bytes, where: str) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptImageError(where, f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise CorruptImageError(where, "empty")
    return Image.open(io.BytesIO(data))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_GREY:
        # convert("RGB") would clip 16-bit values at 255; keep the top 8 bits instead.
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, 1


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to an upright RGB uint8 array of shape (H, W, 3)."""
    _check_truncation_policy(where)
    try:
        with _open(data, where) as image:
            image.load()  # decodes all pixel data: a truncated file fails here
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            array = np.array(rgb, dtype=np.uint8)
    except CorruptImageError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad bytes
        raise CorruptImageError(where, f"{type(error).__name__}: {error}") from error
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(where, f"decoded to an unusable array of shape {array.shape}")
    return array


def decode_uniform(encoded: Sequence[bytes], where: Callable[[int], str]) -> Iterator[np.ndarray]:
    """Decode images one at a time, insisting that all share image 0's size; `where(i)` names image i."""
    first: tuple[int, ...] | None = None
    for i, data in enumerate(encoded):
        array = decode_image(data, where(i))
        first = first or array.shape
        if array.shape != first:
            raise ValueError(f"{where(i)}: size {array.shape[:2]} (h, w) differs from the first image's {first[:2]}")
        yield array


def decode_stack(encoded: Sequence[bytes], where: Callable[[int], str]) -> np.ndarray:
    """Decode equally sized images into one uint8 array of shape (N, H, W, 3)."""
    out = np.zeros((0, 0, 0, 3), dtype=np.uint8)
    for i, array in enumerate(decode_uniform(encoded, where)):
        if i == 0:
            out = np.empty((len(encoded), *array.shape), dtype=np.uint8)
        out[i] = array
    return out


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """(height, width) of the upright image, read from the header alone (no pixel decoding)."""
    try:
        with _open(data, where) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES:
                width, height = height, width
    except CorruptImageError:
        raise
    except Exception as error:
        raise CorruptImageError(where, f"{type(error).__name__}: {error}") from error
    return height, width


def _check_array(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image array, got dtype {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise ValueError(f"{name}: expected an (H, W, 3) RGB or (H, W) grey array, got shape {array.shape}")
    return np.ascontiguousarray(array)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of an RGB (H, W, 3) or grey (H, W) uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(_check_array(array, "encode_png array")).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG of an RGB (H, W, 3) or grey (H, W) uint8 array at `quality` (1..100)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"encode_jpeg quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(_check_array(array, "encode_jpeg array")).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def normalise_encoded(data: bytes, where: str) -> tuple[bytes, np.ndarray]:
    """(bytes to store, decoded RGB array): the original bytes when they already are a plain upright RGB JPEG
    or PNG (no quality lost), otherwise a PNG of the decoded pixels (so any decoder sees upright RGB)."""
    array = decode_image(data, where)
    with _open(data, where) as image:
        plain = (
            image.format in ("JPEG", "PNG")
            and image.mode == "RGB"
            and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
        )
    return (bytes(data) if plain else encode_png(array)), array
