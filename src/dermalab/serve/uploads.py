"""An upload from its bytes to what is analysed and kept: decoded with clear errors (each an
HTTP status), stripped of every metadata, and the lesion outline drawn for the answer."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.errors import DermalabError, ImageError
from dermalab.core.i18n import DEFAULT_LANGUAGE, t
from dermalab.data.images import open_rgb
from dermalab.serve.settings import ServeSettings


class UploadError(DermalabError):
    """An upload that cannot be analysed; ``status`` is the HTTP status to answer, ``key`` and
    ``params`` the catalogue message (``detail`` is it in English)."""

    def __init__(self, status: int, key: str, **params: Any) -> None:
        self.status, self.key, self.params = status, key, params
        self.detail = t(key, DEFAULT_LANGUAGE, **params)
        super().__init__(self.detail)

    def localized(self, lang: str) -> str:
        """The message in ``lang``."""
        return t(self.key, lang, **self.params)


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> Image.Image:
    """Sniff and decode an upload; map problems to HTTP statuses with clear messages.

    Raises:
        UploadError: 413 too many bytes or pixels, 415 not an image, 422 an image that cannot
            be analysed (truncated, too small).
    """
    if len(data) > settings.max_upload_bytes:
        raise UploadError(413, "upload.too_many_bytes", filename=filename,
                          mb=settings.max_upload_bytes // (1024 * 1024))
    try:
        # A 12 MP phone JPEG is decoded at 1/2-1/4 scale (libjpeg's draft mode), still at
        # least decode_side pixels a side: several times faster, and all a 128-224 px model,
        # the outline and the stored copy need.
        img = open_rgb(data, name=filename, max_pixels=settings.max_pixels,
                       draft_size=settings.decode_side)
    except ImageError as exc:
        status, key = {"not_image": (415, "upload.not_image"),
                       "too_large": (413, "upload.too_large")}.get(exc.kind,
                                                                     (422, "upload.unusable"))
        raise UploadError(status, key, filename=filename, reason=exc.reason) from None
    if min(img.size) < settings.min_side:
        raise UploadError(422, "upload.too_small", filename=filename, width=img.size[0],
                          height=img.size[1], min_side=settings.min_side)
    factor = min(img.size) // settings.decode_side
    if factor >= 2:  # formats without a draft mode (PNG, WebP, HEIC): a cheap box reduction
        img = img.reduce(factor)
    return img


def clean_photo(img: Image.Image) -> bytes:
    """The pixels of a decoded upload (already upright and RGB) as a JPEG with no metadata:
    no EXIF, XMP, ICC or comment survives, so neither does a GPS position or a device id."""
    buf = io.BytesIO()
    Image.frombytes("RGB", img.size, img.convert("RGB").tobytes()).save(
        buf, "JPEG", quality=92, optimize=True)
    return buf.getvalue()


OUTLINE_SIDE = 384  # the outline image's longer side
OUTLINE_RGB = (0, 230, 255)  # cyan: visible on every skin tone and on a dark lesion


def lesion_summary(img: Image.Image, mask: np.ndarray) -> dict[str, Any] | None:
    """The lesion the segmenter outlined: its measurements (:func:`measure_photo`, on a
    copy at most 512 px; the diameter given in the photo's own pixels) and the
    photo with the outline drawn, as a PNG data URL. ``None`` when nothing was outlined."""
    from scipy import ndimage

    from dermalab.segment.measure import largest_region, measure_photo

    if not mask.any():
        return None
    measured = measure_photo(img, mask).to_json()
    view = min(1.0, OUTLINE_SIDE / max(img.size))
    vsize = (max(1, round(img.width * view)), max(1, round(img.height * view)))
    photo = np.array(img.resize(vsize, Image.Resampling.BILINEAR), np.uint8)
    region = np.asarray(Image.fromarray(largest_region(mask).astype(np.uint8) * 255).resize(
        vsize, Image.Resampling.NEAREST)) >= 128
    edge = region & ~ndimage.binary_erosion(region, iterations=2)
    photo[edge] = OUTLINE_RGB
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG", compress_level=1)
    return {**measured, "outline_png": "data:image/png;base64,"
            + base64.b64encode(buf.getvalue()).decode()}
