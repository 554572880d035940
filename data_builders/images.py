"""Safe image intake for dataset builders.

Public datasets reference images in several ways (raw bytes, a ``{"bytes", "path"}`` dict as
written by ``datasets.Image``, a path relative to a data folder, an in-memory PIL image).
Every image entering a canonical dataset passes through :func:`load_image_bytes`, which
refuses paths that escape the data folder, decompression bombs and corrupt or truncated
files, and returns the encoded bytes to store, so a saved dataset is self-contained.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

#: Sentinel meaning "use PIL's current ``Image.MAX_IMAGE_PIXELS``" (read at call time).
PIL_LIMIT = -1


class ImageError(ValueError):
    """An image could not be accepted; the message says why (no row context here)."""


@dataclass(frozen=True)
class ImageOptions:
    """How images are resolved and checked.

    ``root``: folder that relative image paths are resolved against; no path may leave it
    (symlinks are resolved first). ``None`` refuses every path reference.
    ``max_pixels``: width × height above which an image is refused as a possible
    decompression bomb; ``PIL_LIMIT`` follows ``PIL.Image.MAX_IMAGE_PIXELS``, ``None``
    disables this check. PIL's own global limit applies in any case (its warning zone is
    refused too); raise ``PIL.Image.MAX_IMAGE_PIXELS`` for genuinely huge images. ``decode``: fully decode each image, which is the only way to
    catch truncated files; turn off only for trusted data.
    """

    root: Path | None = None
    max_pixels: int | None = PIL_LIMIT
    decode: bool = True

    def pixel_limit(self) -> int | None:
        return Image.MAX_IMAGE_PIXELS if self.max_pixels == PIL_LIMIT else self.max_pixels


def resolve_inside(root: Path | None, relative: str | Path) -> Path:
    """``root / relative``, refusing anything that ends up outside ``root``."""
    if root is None:
        raise ImageError(f"image path {_shown(relative)} given but no image folder is set")
    try:
        base = Path(root).resolve()
        target = (base / relative).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
        raise ImageError(f"image path {_shown(relative)} is not a usable path ({exc})") from None
    if not target.is_relative_to(base):
        raise ImageError(f"image path {str(relative)!r} escapes the image folder {base}")
    return target


def check_image_bytes(data: bytes, options: ImageOptions) -> Image.Image:
    """Open (and by default fully decode) encoded image bytes, or raise :class:`ImageError`."""
    limit = options.pixel_limit()
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if limit is not None and width * height > limit:
                raise ImageError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limit} (possible decompression bomb)"
                )
            if options.decode:
                img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (unknown or corrupt format)") from None
    except Exception as exc:  # noqa: BLE001 - PIL parses untrusted bytes; any failure means a bad image
        raise ImageError(f"corrupt or truncated image: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    return img


def _shown(path: str | Path, limit: int = 80) -> str:
    text = repr(str(path))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _read_path(path: str | Path, options: ImageOptions) -> bytes:
    target = resolve_inside(options.root, path)
    try:
        if not target.is_file():
            raise ImageError(f"image file {_shown(path)} not found under {options.root}")
        return target.read_bytes()
    except OSError as exc:
        raise ImageError(f"image file {_shown(path)} cannot be read ({exc.strerror or exc})") from None


def encode_pil(img: Image.Image) -> bytes:
    """Lossless PNG bytes of an in-memory image (JPEG re-encoding would lose quality)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def raw_image_bytes(value: Any, options: ImageOptions) -> bytes:
    """The encoded bytes of one image given in any accepted form, not yet checked.

    Accepted: ``bytes``; a ``{"bytes": ..., "path": ...}`` dict (bytes win when present);
    a ``str`` / ``Path`` relative to ``options.root``; a PIL image (stored as PNG).
    """
    if isinstance(value, Image.Image):
        data = encode_pil(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            if not isinstance(value["bytes"], bytes | bytearray | memoryview):
                raise ImageError(f"image dict 'bytes' must be bytes, got {type(value['bytes']).__name__}")
            data = bytes(value["bytes"])
        elif value.get("path"):
            if not isinstance(value["path"], str | Path):
                raise ImageError(f"image dict 'path' must be a string, got {type(value['path']).__name__}")
            data = _read_path(value["path"], options)
        else:
            raise ImageError("image dict has neither 'bytes' nor 'path'")
    elif isinstance(value, str | Path):
        if not str(value):
            raise ImageError("empty image path")
        data = _read_path(value, options)
    else:
        raise ImageError(
            "expected image bytes, a path, a {bytes, path} dict or a PIL image, "
            f"got {type(value).__name__}"
        )
    if not data:
        raise ImageError("empty image data")
    return data


def load_image_bytes(value: Any, options: ImageOptions) -> bytes:
    """Encoded bytes of one image, checked according to ``options`` (see :class:`ImageOptions`)."""
    data = raw_image_bytes(value, options)
    check_image_bytes(data, options).close()
    return data


def decode_image(value: Any, options: ImageOptions | None = None) -> Image.Image:
    """A decoded RGB PIL image from stored bytes, a ``{"bytes", "path"}`` dict or a path."""
    options = replace(options or ImageOptions(), decode=True)
    return check_image_bytes(raw_image_bytes(value, options), options).convert("RGB")
