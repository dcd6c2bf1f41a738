"""Images of a prompt: resolve a reference to a file, read its size cheaply, load it as RGB,
resize it the way Qwen2-VL's image processor does (``smart_resize``: both sides multiples of
patch_size * merge_size, pixel count within [min_pixels, max_pixels], aspect kept up to that
rounding), and count the ``<|image_pad|>`` tokens it becomes.

Errors a user can cause (missing file, unreadable image, extreme aspect ratio, zero size, an
absurd size) raise ``DataError`` naming the data row (``source``) and the file. Sizes: an image
over ``MAX_PIXELS_FACTOR`` x max_pixels before resizing is ``image_too_large`` (checked from the
header, before any pixel is decoded), and so is one that Pillow refuses as a possible
decompression bomb (over ``PIL.Image.MAX_IMAGE_PIXELS``: its warning is an error here too,
never a crash or a silent multi-GB decode).
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from PIL import Image, UnidentifiedImageError

from lmm_r1_ascend.data.errors import DataError

# An image with more pixels than this many times max_pixels (before resizing) is refused: it
# would be decoded whole only to be shrunk over 8x per side, and is more likely a mistake.
MAX_PIXELS_FACTOR = 64
# What Pillow raises on a corrupt or truncated file (it turns most into OSError / ValueError).
_CORRUPT = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error)


def _open(path: Path, source: str, decode: bool) -> Image.Image:
    """``Image.open`` (and ``load`` if ``decode``) with Pillow's decompression-bomb warning and
    error as a DataError ``image_too_large``, and a zero-sized image as ``bad_image``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(source, "image_too_large",
                            f"image {path} is too large for Pillow to open safely: {exc} (PIL.Image.MAX_IMAGE_PIXELS"
                            f"={Image.MAX_IMAGE_PIXELS}); downscale the image") from None
    if 0 in image.size:
        image.close()
        raise DataError(source, "bad_image", f"image {path} has zero size ({image.width}x{image.height} pixels)")
    if decode:
        try:
            image.load()
        except BaseException:
            image.close()
            raise
    return image


def resolve_image_path(ref: Any, base_dir: Path, source: str) -> Path:
    """The existing local file an image reference names.

    ref: ``file:///abs/a.png``, ``file://rel/a.png`` (read as relative), ``/abs/a.png`` or
        ``rel/a.png``; relative paths are resolved against ``base_dir`` (the data file's folder
        unless the caller chose an image root).
    """
    if not isinstance(ref, str) or not ref.strip():
        raise DataError(source, "bad_content",
                        f"an image must be a non-empty path or file:// URI string, got {ref!r}")
    parsed = urlparse(ref)
    if parsed.scheme == "file":
        path = url2pathname(parsed.path)
        if parsed.netloc and parsed.netloc != "localhost":  # file://images/a.png: a relative path
            path = parsed.netloc + path
    elif len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DataError(source, "bad_content",
                        f"unsupported image URI scheme '{parsed.scheme}' in {ref!r}: only local files "
                        "(paths or file:// URIs) are read; download the image and point to the file")
    else:
        path = ref
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = base_dir / resolved
    if not resolved.is_file():
        raise DataError(source, "missing_image",
                        f"image not found: {resolved} (from {ref!r}; relative paths are resolved "
                        f"against {base_dir})")
    return resolved


def read_image_size(path: Path, source: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with _open(path, source, decode=False) as image:
            width, height = image.size
    except DataError:
        raise
    except _CORRUPT as exc:
        raise DataError(source, "corrupt_image", f"cannot read image {path}: {exc}") from exc
    return height, width


def load_rgb(path: Path, source: str) -> Image.Image:
    """The decoded image in RGB mode; transparency is composited onto white, as the
    Hugging Face image processors do (``convert_to_rgb``)."""
    from transformers.image_transforms import convert_to_rgb

    try:
        with _open(path, source, decode=True) as image:
            rgb = convert_to_rgb(image, return_numpy=True)
    except DataError:
        raise
    except _CORRUPT as exc:
        raise DataError(source, "corrupt_image", f"cannot decode image {path}: {exc}") from exc
    return Image.fromarray(rgb)


def _smart_resize():
    # The PIL module of the processor imports without torchvision (the other one may not).
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize


def _size_bound(processor: Any, edge: str, legacy: str) -> int | None:
    size = getattr(processor, "size", None)
    value = getattr(size, edge, None) if size is not None and not isinstance(size, dict) else None
    if value is None and isinstance(size, dict):
        value = size.get(edge)
    return value if value is not None else getattr(processor, legacy, None)


@dataclass(frozen=True)
class ImageGeometry:
    """How an image maps to patches and pad tokens.

    patch_size: vision patch side in pixels (14 for Qwen2/2.5-VL).
    merge_size: patches merged per side into one language token (2).
    min_pixels, max_pixels: bounds on the resized pixel count (the recipe: 4*28*28, 16384*28*28).
    resample: PIL filter id the processor resizes with (3 = bicubic).
    """

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, "
                             f"max_pixels={self.max_pixels}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_processor(cls, processor: Any, min_pixels: int | None = None,
                       max_pixels: int | None = None) -> ImageGeometry:
        """Read the geometry of a Qwen2-VL-style image processor; explicit bounds win."""
        min_px = min_pixels if min_pixels is not None else _size_bound(processor, "shortest_edge", "min_pixels")
        max_px = max_pixels if max_pixels is not None else _size_bound(processor, "longest_edge", "max_pixels")
        resample = getattr(processor, "resample", None)
        return cls(patch_size=int(processor.patch_size), merge_size=int(processor.merge_size),
                   min_pixels=int(min_px if min_px is not None else cls.min_pixels),
                   max_pixels=int(max_px if max_px is not None else cls.max_pixels),
                   resample=int(resample if resample is not None else cls.resample))

    def resized_hw(self, height: int, width: int, source: str = "") -> tuple[int, int]:
        """(height, width) after resizing: ``smart_resize`` of the processor itself."""
        limit = MAX_PIXELS_FACTOR * self.max_pixels
        if height * width > limit:
            raise DataError(source, "image_too_large",
                            f"image of {width}x{height} = {height * width} pixels is over the limit of "
                            f"{MAX_PIXELS_FACTOR} x max_pixels = {MAX_PIXELS_FACTOR} x {self.max_pixels} = {limit} "
                            "pixels (before resizing); downscale the image or raise data.max_pixels")
        if height < 1 or width < 1:
            raise DataError(source, "bad_image", f"image of {width}x{height} pixels has zero size")
        try:
            return _smart_resize()(height, width, factor=self.factor, min_pixels=self.min_pixels,
                                   max_pixels=self.max_pixels)
        except ValueError as exc:  # aspect ratio over 200
            raise DataError(source, "bad_image", f"image of {width}x{height} pixels cannot be used: {exc}") from exc

    def num_pad_tokens(self, height: int, width: int, source: str = "") -> int:
        """``<|image_pad|>`` tokens of an image of this original size: merged patches after resizing."""
        h, w = self.resized_hw(height, width, source)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size ** 2)

    def resize(self, image: Image.Image, source: str = "") -> Image.Image:
        """The RGB image resized to ``resized_hw`` (returned as is when already that size)."""
        h, w = self.resized_hw(image.height, image.width, source)
        if (h, w) == (image.height, image.width):
            return image
        return image.resize((w, h), resample=self.resample)
