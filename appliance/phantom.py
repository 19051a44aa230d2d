"""Ultrasound-like phantom images of breast tissue with a lesion of known shape.

Pure generation, no I/O: `make_phantom` turns a `PhantomSpec` into a `Phantom` (the B-mode
image, the lesion's ground-truth mask, its area and its largest Feret diameter). Used by
`fame-node demo` and by the end-to-end tests that compare the node's measurements with the
truth; `appliance.phantom_dicom` writes phantoms to DICOM and PNG files.

The image is built the way a linear-array scanner forms it: a reflectivity map (skin line,
subcutaneous fat with Cooper's ligaments, textured fibroglandular tissue, retromammary fat,
striated pectoral muscle; the lesion with a blurred margin; optional posterior shadow or
enhancement), scattered by complex Gaussian scatterers and blurred by a point-spread function
that is wider laterally than axially (fully developed, laterally elongated speckle with a
Rayleigh envelope, see `speckle_envelope`), depth attenuation under an imperfect
time-gain-compensation curve, and log compression to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np
from numpy.typing import NDArray

from appliance.postprocess import max_feret_diameter

FloatArray = NDArray[np.float32]
Curve = NDArray[np.float64]  # one row coordinate per image column
Rng = np.random.Generator
LesionKind = Literal["none", "ellipse", "lobulated"]
PosteriorKind = Literal["none", "shadow", "enhancement"]

_DYNAMIC_RANGE_DB = 50.0
_FLOOR_DB = -24.0  # displayed black; 0 dB is the mean echo power of fibroglandular tissue
_POSTERIOR_DB = {"none": 0.0, "shadow": -10.0, "enhancement": 6.0}
_MARGIN_BLUR_PX = 2.2
_LOOKS = 2


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. Sizes in pixels; `center` is (row, col), None for a random place.

    `semi_axes_px` is (a, b): a along the image's horizontal (lateral) axis and b along the
    vertical (depth) axis before rotation; `angle_deg` turns the a-axis counterclockwise as
    seen on screen. `echogenicity` is the lesion's displayed brightness relative to the
    fibroglandular tissue around it (0.25: hypoechoic; 0: anechoic, like a cyst; 1: isoechoic;
    up to 2: hyperechoic); with log compression it is an echo level of (e - 1) x 24 dB.
    """

    height: int = 360
    width: int = 480
    lesion: LesionKind = "ellipse"
    center: tuple[float, float] | None = None
    semi_axes_px: tuple[float, float] = (60.0, 40.0)
    angle_deg: float = 0.0
    echogenicity: float = 0.25
    posterior: PosteriorKind = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        h, w, c, axes = self.height, self.width, self.center, self.semi_axes_px
        kinds, posteriors = get_args(LesionKind), get_args(PosteriorKind)
        _check(h >= 64 and w >= 64, "height and width >= 64 pixels", (h, w))
        _check(self.lesion in kinds, f"lesion in {kinds}", self.lesion)
        _check(self.posterior in posteriors, f"posterior in {posteriors}", self.posterior)
        _check(len(axes) == 2 and min(axes) >= 2.0, "semi_axes_px (a, b), both >= 2", axes)
        in_image = c is None or (0 <= c[0] < h and 0 <= c[1] < w)
        _check(in_image, f"center (row, col) in the {h}x{w} image, or None for random", c)
        _check(0.0 <= self.echogenicity <= 2.0, "echogenicity in [0, 2]", self.echogenicity)
        _check(self.seed >= 0, "a non-negative integer seed", self.seed)


def _check(ok: bool, expected: str, received: object) -> None:
    if not ok:
        raise ValueError(f"PhantomSpec: expected {expected}, got {received!r}")


@dataclass(frozen=True)
class Phantom:
    """A generated image and its truth: `mask` is 1 inside the lesion, 0 elsewhere."""

    image: NDArray[np.uint8]
    mask: NDArray[np.uint8]
    area_px: int
    max_diameter_px: float
    spec: PhantomSpec


def ood_check_specs() -> list[PhantomSpec]:
    """The 24 phantoms a shipped model must flag out of distribution: four seeds by three
    lesion echogenicities by two posterior patterns, none and shadow
    (`tests/e2e/test_ood_shipped.py` checks the shipped bundle, `trainer.site_report`
    measures every candidate)."""
    return [
        PhantomSpec(seed=s, echogenicity=e, posterior=p)
        for s in range(4)
        for e in (0.0, 0.25, 1.5)
        for p in ("none", "shadow")
    ]


def make_phantom(spec: PhantomSpec) -> Phantom:
    """Generate the phantom described by `spec`; the same spec gives the same pixels."""
    anatomy_rng, lesion_rng, speckle_rng = np.random.default_rng(spec.seed).spawn(3)
    h, w = spec.height, spec.width
    refl = _tissue(anatomy_rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    if spec.lesion != "none":
        center = spec.center if spec.center is not None else _random_center(lesion_rng, spec)
        inside = _lesion_inside(spec, center, lesion_rng)
        mask = inside.astype(np.uint8)
        weight = _blur(inside.astype(np.float32), _MARGIN_BLUR_PX)
        texture = np.exp(0.2 * _noise_field(lesion_rng, h, w, 6.0, 3.0))
        level_db = (spec.echogenicity - 1.0) * -_FLOOR_DB
        lesion_refl = np.float32(10.0 ** (level_db / 20.0)) * texture
        refl = np.exp((1 - weight) * np.log(refl) + weight * np.log(lesion_refl))
        if spec.posterior != "none":
            refl *= _posterior_gain(weight, spec.posterior, lesion_rng)
    # Spatial compounding, as modern scanners do: average the echo power of a few looks.
    looks = [speckle_envelope(refl.astype(np.float32), speckle_rng) for _ in range(_LOOKS)]
    power = np.mean([look * look for look in looks], axis=0).astype(np.float32)
    image = _display(power, anatomy_rng)
    return Phantom(image, mask, int(mask.sum()), max_feret_diameter(mask), spec)


def speckle_envelope(
    reflectivity: FloatArray,
    rng: Rng,
    *,
    sigma_axial_px: float = 1.0,
    sigma_lateral_px: float = 2.4,
    noise_floor: float = 0.02,
) -> FloatArray:
    """Echo envelope: |PSF * (reflectivity x complex Gaussian scatterers)| plus system noise.

    Where `reflectivity` is constant the envelope is Rayleigh distributed (std/mean =
    sqrt(4/pi - 1) ~ 0.52) with mean power reflectivity**2; the Gaussian PSF is wider
    laterally (columns) than axially (rows), so speckle grains are elongated sideways.
    """
    shape = reflectivity.shape
    kernel_norm = _gaussian_l2(sigma_axial_px) * _gaussian_l2(sigma_lateral_px)
    scatter = rng.standard_normal((2, *shape), dtype=np.float32) * (reflectivity / np.sqrt(2))
    parts = [_blur(s, sigma_lateral_px, sigma_axial_px) / kernel_norm for s in scatter]
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(noise_floor)
    return np.hypot(parts[0] + noise[0], parts[1] + noise[1]).astype(np.float32)


def _blur(image: FloatArray, sigma_x: float, sigma_y: float | None = None) -> FloatArray:
    """Gaussian filter; x is the lateral (column) direction, y the axial (row) one."""
    sy = sigma_x if sigma_y is None else sigma_y
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_x, sigmaY=sy), np.float32)


def _gaussian_l2(sigma: float) -> float:
    k = cv2.getGaussianKernel(2 * int(np.ceil(4 * sigma)) + 1, sigma)
    return float(np.sqrt((k**2).sum()))


def _noise_field(rng: Rng, h: int, w: int, sigma_lateral: float, sigma_axial: float) -> FloatArray:
    """Smooth Gaussian random field with zero mean and unit std, elongated laterally."""
    field = _blur(rng.standard_normal((h, w), dtype=np.float32), sigma_lateral, sigma_axial)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


def _curve(rng: Rng, w: int, base: float, amp: float) -> Curve:
    """A gently undulating boundary: row of the boundary at each column."""
    x = np.arange(w) / w
    y = np.full(w, base)
    for k in (1, 2, 4):
        y += amp / k * np.sin(2 * np.pi * (k * x + rng.uniform()))
    return y


def _tissue(rng: Rng, h: int, w: int) -> FloatArray:
    """Reflectivity (echo amplitude) of the layered breast: skin, fat, gland, muscle."""
    rows = np.arange(h, dtype=np.float64)[:, None]
    skin = _curve(rng, w, 0.035 * h, 0.006 * h)
    fat_end = _curve(rng, w, rng.uniform(0.2, 0.28) * h, 0.05 * h)
    gland_end = _curve(rng, w, rng.uniform(0.74, 0.8) * h, 0.04 * h)
    muscle = gland_end + rng.uniform(0.03, 0.05) * h
    fat = 0.33 * np.exp(0.2 * _noise_field(rng, h, w, 10.0, 6.0))
    lobules, septa = _fat_lobules(rng, h, skin, fat_end)
    fat *= 1.0 - 0.35 * lobules
    fatty_islands = _noise_field(rng, h, w, 16.0, 6.0) > 1.2
    streaks = np.maximum(_noise_field(rng, h, w, 14.0, 1.3), 0.0)
    gland = np.exp(0.25 * _noise_field(rng, h, w, 9.0, 3.0) + 0.5 * streaks)
    gland = np.where(fatty_islands, 0.35 * gland, gland)
    phase = (rows * np.cos(0.12) + np.arange(w)[None, :] * np.sin(0.12)) / (0.035 * h)
    wiggle = 0.6 * _noise_field(rng, h, w, 20.0, 3.0)
    fibres = np.maximum(np.sin(2 * np.pi * phase + wiggle), 0.0) ** 6
    muscle_refl = 0.45 * (1.0 + 2.2 * fibres) * np.exp(0.2 * _noise_field(rng, h, w, 8.0, 2.0))
    # Tissue planes follow the undulating layers rather than the image rows.
    gland, muscle_refl = (_warp(rng, f.astype(np.float32), 0.03 * h) for f in (gland, muscle_refl))
    refl = np.where(rows < fat_end, fat, gland)
    refl = np.where(rows > gland_end, 0.3 * fat / 0.33, refl)
    refl = np.where(rows > muscle, muscle_refl, refl)
    refl = np.where(np.abs(rows - muscle) < 1.5, 2.5, refl)  # fascia
    # Skin: a bright double line (epidermis, dermis) over near-field gel.
    refl = np.where(rows < skin - 2, 0.08, refl)
    refl = np.where(np.abs(rows - skin) < 2.5, 3.5, refl)
    refl = np.where((rows > skin + 2.5) & (rows < skin + 6), 1.1, refl)
    refl += 2.0 * septa
    return refl.astype(np.float32)


def _warp(rng: Rng, field: FloatArray, amplitude_px: float) -> FloatArray:
    """Move `field` up and down by a smooth random displacement that varies across it."""
    h, w = field.shape
    # A coarse random grid, upsampled: as smooth as a wide Gaussian filter but much cheaper.
    coarse = rng.standard_normal((4, 6)).astype(np.float32)
    shift = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * np.float32(amplitude_px)
    map_x = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    map_y = np.arange(h, dtype=np.float32)[:, None] + shift
    warped = cv2.remap(field, map_x, map_y, cv2.INTER_LINEAR, None, cv2.BORDER_REFLECT)
    return np.asarray(warped, np.float32)


def _fat_lobules(rng: Rng, h: int, skin: Curve, fat_end: Curve) -> tuple[FloatArray, FloatArray]:
    """Subcutaneous fat lobules (darker ovals) and the bright septa (Cooper's ligaments)."""
    w = len(skin)
    lobules = np.zeros((h, w), np.float32)
    septa = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(4, 8))):
        col = int(rng.uniform(0, w))
        top, bottom = skin[col] + 6, fat_end[col]
        row = int(rng.uniform(top, max(bottom, top + 1)))
        tilt, start, span, level = rng.uniform((-15, 0, 60, 0.3), (15, 360, 160, 0.8))
        axes = (
            int(rng.uniform(0.06, 0.14) * w),
            max(int(rng.uniform(0.2, 0.4) * (bottom - top)), 3),
        )
        cv2.ellipse(lobules, (col, row), axes, tilt, 0.0, 360.0, 1.0, -1, cv2.LINE_AA)
        cv2.ellipse(septa, (col, row), axes, tilt, start, start + span, level, 1, cv2.LINE_AA)
    return _blur(lobules, 2.0), _blur(septa, 0.7)


def _random_center(rng: Rng, spec: PhantomSpec) -> tuple[float, float]:
    ext = max(spec.semi_axes_px) * (1.3 if spec.lesion == "lobulated" else 1.0) + 4
    lo_r, hi_r = max(0.35 * spec.height, ext), min(0.6 * spec.height, spec.height - ext)
    lo_c, hi_c = max(0.25 * spec.width, ext), min(0.75 * spec.width, spec.width - ext)
    row = rng.uniform(lo_r, hi_r) if lo_r < hi_r else spec.height / 2
    col = rng.uniform(lo_c, hi_c) if lo_c < hi_c else spec.width / 2
    return float(row), float(col)


def _lesion_inside(spec: PhantomSpec, center: tuple[float, float], rng: Rng) -> NDArray[np.bool_]:
    """Pixels whose centre lies inside the (possibly lobulated) rotated ellipse."""
    rows, cols = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float64)
    x, y_up = cols - center[1], center[0] - rows
    t = np.deg2rad(spec.angle_deg)
    u = (x * np.cos(t) + y_up * np.sin(t)) / spec.semi_axes_px[0]
    v = (-x * np.sin(t) + y_up * np.cos(t)) / spec.semi_axes_px[1]
    rho = np.hypot(u, v)
    if spec.lesion == "ellipse":
        return rho <= 1.0
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    lobes = int(rng.integers(3, 7))
    radius += rng.uniform(0.1, 0.15) * np.sin(lobes * theta + rng.uniform(0, 2 * np.pi))
    radius += rng.uniform(0.04, 0.07) * np.sin((lobes + 1) * theta + rng.uniform(0, 2 * np.pi))
    return rho <= radius  # star-shaped about the centre, hence one connected region


def _posterior_gain(weight: FloatArray, kind: str, rng: Rng) -> FloatArray:
    """Amplitude gain below the lesion: a shadow (< 1) or an enhancement (> 1)."""
    h, w = weight.shape
    inside = weight > 0.5
    has = inside.any(axis=0)
    bottom = np.where(has, h - 1 - np.argmax(inside[::-1], axis=0), h)
    rows = np.arange(h)[:, None]
    below = np.clip((rows - bottom[None, :]) / 12.0, 0.0, 1.0)
    if kind == "enhancement":
        below *= np.exp(-np.clip(rows - bottom[None, :], 0, None) / (0.6 * h))
    profile = _blur(below.astype(np.float32), max(2.0, 0.04 * has.sum()), 2.0)
    # Shadows are streaky: their depth varies from one column to the next.
    streaks = _blur(rng.standard_normal((1, w), dtype=np.float32), 2.5)
    streaks = 1.0 + 0.25 * streaks / (streaks.std() + 1e-6)
    return (10.0 ** (_POSTERIOR_DB[kind] * profile * streaks / 20.0)).astype(np.float32)


def _display(power: FloatArray, rng: Rng) -> NDArray[np.uint8]:
    """Attenuation, time-gain compensation and log compression to 8 bits."""
    h = power.shape[0]
    depth = np.linspace(0.0, 1.0, h)
    attenuation_db = -45.0 * depth  # round-trip loss over the imaged depth
    knots = np.linspace(0.0, 1.0, 8)
    tgc_db = np.interp(depth, knots, 45.0 * knots - 12.0 * knots**1.3 + rng.uniform(-1.5, 1.5, 8))
    focus_db = 2.0 * np.exp(-(((depth - 0.45) / 0.2) ** 2))
    gain_db = (attenuation_db + tgc_db + focus_db).astype(np.float32)[:, None]
    # The scanner's speckle reduction: a slight blur of echo power before log compression.
    power = _blur(power, 0.6)
    level_db = 10.0 * np.log10(np.maximum(power, 1e-12)) + gain_db
    grey = (level_db - _FLOOR_DB) * (255.0 / _DYNAMIC_RANGE_DB)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
