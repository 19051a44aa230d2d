"""Preprocessing of the FAME paper, as one pure function shared by training and inference.

Steps (FAME, "Preprocessing"): resize to a fixed square keeping the aspect ratio (the rest
is padded with zeros, i.e. letterboxed), speckle reduction by a median then a Gaussian
filter, optional CLAHE, and intensity normalisation. The parameters travel in every model
bundle's manifest, so a model is always run the way it was trained.

`letterbox_mask` and `unletterbox` map masks between an original frame and the network's
square input, using the `Letterbox` geometry that `preprocess` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

FloatImage = NDArray[np.float32]


@dataclass(frozen=True)
class PreprocessParams:
    """Parameters of `preprocess`; stored in the model bundle manifest."""

    size: int = 128
    median_kernel: int = 3  # odd, >= 1 (1 disables)
    gaussian_sigma: float = 0.8  # pixels at the output size; 0 disables
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    normalization: Literal["zscore", "minmax"] = "zscore"

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 16:
            raise ValueError(
                f"preprocess size must be a multiple of 16 and >= 16 (the network pools 4 times), "
                f"got {self.size}"
            )
        if self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError(f"median_kernel must be odd and >= 1, got {self.median_kernel}")
        if self.gaussian_sigma < 0:
            raise ValueError(f"gaussian_sigma must be >= 0, got {self.gaussian_sigma}")
        if self.normalization not in ("zscore", "minmax"):
            raise ValueError(
                f"normalization must be 'zscore' or 'minmax', got {self.normalization!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown preprocessing parameters {unknown}; expected a subset of "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**known)


@dataclass(frozen=True)
class Letterbox:
    """Where an original (src_h, src_w) frame sits inside the square network input."""

    src_h: int
    src_w: int
    size: int
    scale: float  # output pixels per source pixel
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int


def letterbox_geometry(src_h: int, src_w: int, size: int) -> Letterbox:
    """Geometry of resizing (src_h, src_w) into a size x size square, centred, aspect kept."""
    if src_h < 1 or src_w < 1:
        raise ValueError(f"cannot letterbox an empty image of shape ({src_h}, {src_w})")
    scale = size / max(src_h, src_w)
    new_h = max(1, min(size, round(src_h * scale)))
    new_w = max(1, min(size, round(src_w * scale)))
    return Letterbox(
        src_h=src_h,
        src_w=src_w,
        size=size,
        scale=scale,
        new_h=new_h,
        new_w=new_w,
        pad_top=(size - new_h) // 2,
        pad_left=(size - new_w) // 2,
    )


def _resize_into(image: NDArray[Any], geo: Letterbox, interpolation: int) -> NDArray[Any]:
    resized = cv2.resize(image, (geo.new_w, geo.new_h), interpolation=interpolation)
    out = np.zeros((geo.size, geo.size), dtype=image.dtype)
    out[geo.pad_top : geo.pad_top + geo.new_h, geo.pad_left : geo.pad_left + geo.new_w] = resized
    return out


def preprocess(image: NDArray[Any], params: PreprocessParams) -> tuple[FloatImage, Letterbox]:
    """Turn one greyscale frame into the network input.

    Parameters
    ----------
    image:
        2-D greyscale array (uint8, uint16 or float); any size.
    params:
        The model's preprocessing parameters.

    Returns
    -------
    (array, geometry): float32 array of shape (size, size), and the letterbox geometry
    needed to map a predicted mask back onto `image`.
    """
    if image.ndim != 2:
        raise ValueError(f"preprocess expects a 2-D greyscale frame, got shape {image.shape}")
    img = image
    if img.dtype != np.uint8:
        # Rescale any other depth to 8 bits over its own range: the filters and CLAHE below
        # are defined on 8-bit data, as in training.
        f = img.astype(np.float32)
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(f)
        img = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    geo = letterbox_geometry(img.shape[0], img.shape[1], params.size)
    resized = cv2.resize(
        img,
        (geo.new_w, geo.new_h),
        interpolation=cv2.INTER_AREA if geo.scale < 1 else cv2.INTER_LINEAR,
    )
    # Filter the image content only, before padding, so the zero border does not bleed in.
    if params.median_kernel > 1 and min(resized.shape) >= params.median_kernel:
        resized = cv2.medianBlur(resized, params.median_kernel)
    if params.gaussian_sigma > 0:
        resized = cv2.GaussianBlur(resized, (0, 0), sigmaX=params.gaussian_sigma)
    if params.clahe:
        clahe = cv2.createCLAHE(
            clipLimit=params.clahe_clip_limit,
            tileGridSize=(params.clahe_tiles, params.clahe_tiles),
        )
        resized = clahe.apply(resized)
    content = resized.astype(np.float32)
    if params.normalization == "zscore":
        mean, std = float(content.mean()), float(content.std())
        content = (content - mean) / max(std, 1e-3)
    else:
        content = content / 255.0
    out = np.zeros((params.size, params.size), dtype=np.float32)
    out[geo.pad_top : geo.pad_top + geo.new_h, geo.pad_left : geo.pad_left + geo.new_w] = content
    return out, geo


def letterbox_mask(mask: NDArray[Any], size: int) -> NDArray[np.uint8]:
    """Map a binary mask of an original frame into the network's square (nearest neighbour)."""
    geo = letterbox_geometry(mask.shape[0], mask.shape[1], size)
    binary = (mask > 0).astype(np.uint8)
    return _resize_into(binary, geo, cv2.INTER_NEAREST)


def unletterbox(prob: NDArray[Any], geo: Letterbox) -> NDArray[np.float32]:
    """Map a (size, size) probability map back onto the original frame (bilinear)."""
    if prob.shape != (geo.size, geo.size):
        raise ValueError(f"expected a ({geo.size}, {geo.size}) map, got {prob.shape}")
    inner = prob[geo.pad_top : geo.pad_top + geo.new_h, geo.pad_left : geo.pad_left + geo.new_w]
    out = cv2.resize(
        inner.astype(np.float32), (geo.src_w, geo.src_h), interpolation=cv2.INTER_LINEAR
    )
    return np.asarray(out, dtype=np.float32)
