"""The two sizes of the dual-stage ensemble classifier, in one place: ``edge`` and ``paper``.

``paper`` is the FAME paper's classifier at its published widths: ResNet50V2 (pre-activation
bottlenecks, stages [3, 4, 6, 3], 64-128-256-512 bottleneck widths, 2048 features),
NASNet-A Large (N = 6 normal cells per stack, penultimate filters 4032, i.e. 168 filters in
the first stack, stem 96, skip-reduction on; 4032 features; Zoph et al. 2018 and the
reference Keras implementation) and the MAU-Net encoder at MAU-Net's base width 16 (256
features); stage-one heads of 1024 units, dropout 0.3.

``edge`` is the same code narrowed until the node's whole graph (MAU-Net base width 16 plus
this classifier, 128 x 128, batch 1) runs at >= 15 images/s through ONNX Runtime on the
2-core CPU of the node (`python -m trainer.dual_stage_bench`; the figures are in that
module's docstring): one bottleneck per ResNet
stage, NASNet-A with N = 1 and 8 first-stack filters, the MAU-Net encoder at base width 8 on
the input average-pooled by 2, heads and meta-classifier of 128 units.

The architecture record of a bundle (`trainer.weights`) stores the widths themselves, not
only the profile's name, so a bundle still builds if a profile here is retuned later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ResNetV2Spec:
    """A pre-activation bottleneck ResNet: stem, then stages of bottleneck blocks.

    `widths` are the bottleneck (inner) widths per stage; a block's output is
    ``expansion`` times that (ResNet50V2: 64-128-256-512, expansion 4, 2048 features).
    """

    stem_width: int = 64
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    expansion: int = 4

    def __post_init__(self) -> None:
        if not self.depths or len(self.depths) != len(self.widths):
            raise ValueError(
                f"ResNet depths {self.depths} and widths {self.widths} must be non-empty and "
                "of equal length (one depth and one width per stage)"
            )
        if min(self.depths) < 1 or min(self.widths) < 1 or self.stem_width < 1:
            raise ValueError(f"ResNet depths and widths must be >= 1, got {self}")
        if self.expansion < 1:
            raise ValueError(f"ResNet expansion must be >= 1, got {self.expansion}")

    @property
    def features(self) -> int:
        return self.widths[-1] * self.expansion


@dataclass(frozen=True)
class NASNetSpec:
    """NASNet-A: a stem, two stem reduction cells, then three stacks of `cells` normal cells
    separated by two reduction cells; the filters double at each reduction.

    `penultimate_filters` = 24 x the first stack's filters, as in Keras' NASNet (4032 for
    NASNet-A Large, whose first stack has 168 filters). `skip_reduction` feeds the normal
    cell after a reduction with the cell before the reduction as its second input (Large).
    """

    stem_filters: int = 96
    cells: int = 6
    penultimate_filters: int = 4032
    filter_multiplier: int = 2
    skip_reduction: bool = True

    def __post_init__(self) -> None:
        if self.penultimate_filters % 24 or self.penultimate_filters < 24:
            raise ValueError(
                f"NASNet penultimate_filters must be a positive multiple of 24 (6 branches x "
                f"4 = 24 x the first stack's filters), got {self.penultimate_filters}"
            )
        first = self.penultimate_filters // 24
        if first % (2 * self.filter_multiplier**2):
            raise ValueError(
                f"NASNet first-stack filters {first} must be divisible by "
                f"{2 * self.filter_multiplier**2} (the stem cells use filters / "
                f"{self.filter_multiplier**2}, halved by the factorised reduction)"
            )
        if self.cells < 1 or self.stem_filters < 1 or self.filter_multiplier < 1:
            raise ValueError(f"NASNet cells, stem filters and multiplier must be >= 1: {self}")

    @property
    def filters(self) -> int:
        """Filters of the first normal stack."""
        return self.penultimate_filters // 24

    @property
    def features(self) -> int:
        # The last normal cell concatenates 6 branches of filters * multiplier**2 channels.
        return 6 * self.filters * self.filter_multiplier**2


@dataclass(frozen=True)
class MAUEncoderSpec:
    """The MAU-Net encoder (four residual levels with dual attention, bottleneck) as a
    backbone; features = 16 x `base_width` (the bottleneck's channels).

    `input_pool` > 1 average-pools the input by that factor first: the encoder's first level
    runs at full resolution and is most of its cost; ``edge`` halves it (the segmenter in
    front has already looked at full resolution), ``paper`` does not.
    """

    base_width: int = 16
    input_pool: int = 1

    def __post_init__(self) -> None:
        if self.base_width < 1 or self.input_pool < 1:
            raise ValueError(f"MAU-Net encoder base_width and input_pool must be >= 1, got {self}")

    @property
    def features(self) -> int:
        return 16 * self.base_width


@dataclass(frozen=True)
class DualStageProfile:
    """Every width and depth of one `DualStageClassifier` size."""

    name: str
    resnet: ResNetV2Spec
    nasnet: NASNetSpec
    maunet: MAUEncoderSpec
    head_width: int = 1024  # stage-one dense layer (paper: 1024)
    meta_width: int = 1024  # stage-two dense layer over the concatenated features
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.head_width < 1 or self.meta_width < 1:
            raise ValueError(f"head and meta widths must be >= 1, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists), as the architecture record stores it."""
        data = asdict(self)
        return dict(_listed(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualStageProfile:
        """The inverse of `to_dict`; KeyError / TypeError / ValueError for a bad record."""
        r, n, m = data["resnet"], data["nasnet"], data["maunet"]
        return cls(
            name=str(data["name"]),
            resnet=ResNetV2Spec(
                stem_width=int(r["stem_width"]),
                depths=tuple(int(v) for v in r["depths"]),
                widths=tuple(int(v) for v in r["widths"]),
                expansion=int(r["expansion"]),
            ),
            nasnet=NASNetSpec(
                stem_filters=int(n["stem_filters"]),
                cells=int(n["cells"]),
                penultimate_filters=int(n["penultimate_filters"]),
                filter_multiplier=int(n["filter_multiplier"]),
                skip_reduction=bool(n["skip_reduction"]),
            ),
            maunet=MAUEncoderSpec(
                base_width=int(m["base_width"]), input_pool=int(m.get("input_pool", 1))
            ),
            head_width=int(data["head_width"]),
            meta_width=int(data["meta_width"]),
            dropout=float(data["dropout"]),
        )


def _listed(data: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.append((key, dict(_listed(value))))
        elif isinstance(value, tuple):
            out.append((key, list(value)))
        else:
            out.append((key, value))
    return out


PAPER = DualStageProfile(
    name="paper",
    resnet=ResNetV2Spec(),
    nasnet=NASNetSpec(),
    maunet=MAUEncoderSpec(base_width=16),
    head_width=1024,
    meta_width=1024,
    dropout=0.3,
)

EDGE = DualStageProfile(
    name="edge",
    resnet=ResNetV2Spec(stem_width=16, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
    nasnet=NASNetSpec(stem_filters=16, cells=1, penultimate_filters=192, skip_reduction=False),
    maunet=MAUEncoderSpec(base_width=8, input_pool=2),
    head_width=128,
    meta_width=128,
    dropout=0.3,
)

PROFILES: dict[str, DualStageProfile] = {"edge": EDGE, "paper": PAPER}


def profile(name: str) -> DualStageProfile:
    """The profile called `name`; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown classifier profile {name!r}: choose one of {sorted(PROFILES)}"
        ) from None


__all__ = [
    "EDGE",
    "PAPER",
    "PROFILES",
    "DualStageProfile",
    "MAUEncoderSpec",
    "NASNetSpec",
    "ResNetV2Spec",
    "profile",
]
