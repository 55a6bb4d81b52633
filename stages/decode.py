"""Decode stage: image file -> RGB uint8 array, or a per-image failure with a reason.

Two modes (``decode.mode``, part of the job fingerprint):

* ``llava``: LLaVA-1.5's loader, ``Image.open(path).convert("RGB")``, so a model trained
  or evaluated on these tokens saw the pixels LLaVA's did (the paper's, and every LLaVA-1.5
  number it compares with): no EXIF rotation (width/height as stored), alpha dropped (the
  stored colour of transparent pixels kept), Pillow's own conversions (16-bit grey clipped
  at 255, palette, CMYK). The bundled LLaVA specs use it. (LLaVA's ScienceQA and MMBench
  scripts skip the conversion and break on palette and CMYK images; this mode does not.)
* ``careful`` (the spec default, what every job before the field did): the decisions
  below, for a new model: what a viewer saw.

Rules of both modes: containment, the pixel limit, the first frame, truncated files.
Decisions of ``careful`` (real LLaVA corpora contain all of these):

* Containment: ``item["path"]`` is resolved with all symlinks (``os.path.realpath``) and
  must lie inside the real image root given to the stage; the resolved file is what is
  opened. A symlink pointing out of the root is a failure, not a read.
* Pixel limit (decompression bombs): ``decode.max_pixels`` is checked on the header size,
  before any pixel is decoded. Pillow's own global guard (``Image.MAX_IMAGE_PIXELS``) also
  still applies and is reported the same way; it is not changed here (process-wide state).
* Animated images (GIF, APNG, WebP): the first frame.
* EXIF orientation is applied (``ImageOps.exif_transpose``); width/height are those of the
  upright image.
* Alpha (RGBA, LA, palette with transparency): composited on **white**, i.e. what a
  viewer (and the person who wrote the conversation) saw. LLaVA's own loader drops the
  alpha channel instead; the two differ only where pixels are transparent, where the
  stored colour is often black or garbage.
* Grayscale, bilevel, CMYK, YCbCr, palette: Pillow's conversion to RGB (no ICC colour
  management). 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) is mapped to 8 bits
  as value / 257 rounded (65535 -> 255), values outside 0..65535 clipped; float (``F``)
  images are clipped to 0..255.
* Truncated files are failures (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..schemas.spec import DecodeSpec
from .batch import Batch, Item, exception_reason, fail, fail_with, failed

#: The file suffixes (any case) taken as images in a folder: a folder corpus (pipeline/corpus.py)
#: and the pictures of ``masktok ask`` (inference/ask.py).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}

STAGE = "decode"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class DecodeError(Exception):
    """An image that cannot be used; the message is the failure reason."""


def resolve_inside(path: str | Path, image_root: str | Path) -> str:
    """The real path of ``path``, which must lie inside the real ``image_root``."""
    real_root = os.path.realpath(image_root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise DecodeError(f"outside image root: {path} resolves to {real}, not under {real_root}")
    return real


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        values = np.asarray(im).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        gray = np.rint(np.clip(np.asarray(im), 0, 255)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _llava_rgb(im: Image.Image) -> np.ndarray:
    """LLaVA-1.5's ``convert('RGB')``, Pillow's warnings about dropped transparency silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(im.convert("RGB"))


def decode_image(path: str | Path, image_root: str | Path, max_pixels: int, mode: str = "careful") -> np.ndarray:
    """Read one image as a C-contiguous ``uint8 [H, W, 3]`` RGB array (rules above).

    Raises :class:`DecodeError` with a one-line reason for every kind of bad file.
    """
    real = resolve_inside(path, image_root)
    if not os.path.exists(real):
        raise DecodeError(f"missing file: {path}")
    if not os.path.isfile(real):
        raise DecodeError(f"not a regular file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(real) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise DecodeError(
                        f"too many pixels: {width}x{height} = {width * height:,} > "
                        f"decode.max_pixels {max_pixels:,}"
                    )
                im.seek(0)  # animated: first frame
                im.load()
                if mode == "llava":
                    rgb = _llava_rgb(im)
                else:
                    rgb = _to_rgb(ImageOps.exif_transpose(im))
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too many pixels: {exception_reason(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not an image: {path}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"truncated or corrupt: {exception_reason(exc)}") from exc
    return np.array(rgb, dtype=np.uint8, order="C")  # an owned, writable copy


class DecodeStage:
    """Adds ``image``, ``width``, ``height`` to each item, or an ``error`` record.

    ``image_root``: the folder every item's path must resolve inside (the corpus root).
    """

    def __init__(self, spec: DecodeSpec, image_root: str | Path) -> None:
        self.max_pixels, self.mode = spec.max_pixels, spec.mode
        self.image_root = Path(image_root)

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if not failed(item):
                self._decode(item)
        return batch

    def _decode(self, item: Item) -> None:
        try:
            image = decode_image(item["path"], self.image_root, self.max_pixels, self.mode)
        except DecodeError as exc:
            fail(item, STAGE, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop a run
            # out of host memory: raised, so that stages/chain.call_stage retries it alone and
            # records it as a resource failure, not as a bad image
            fail_with(item, STAGE, exc, "unexpected decode error: ")
            return
        item["image"] = image
        item["height"], item["width"] = int(image.shape[0]), int(image.shape[1])
