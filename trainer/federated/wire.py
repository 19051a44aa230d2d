"""The model on the wire: a `FameNodeNet`'s state as an ordered list of arrays.

Flower carries a model as a list of arrays. The order is the one of ``state_dict()``,
which is fixed by the architecture; a received list is loaded only when it has exactly
that many arrays, each of the expected shape and dtype, every value finite
(`load_arrays`). The digest (`arrays_digest`) is a sha256 over every array's dtype, shape
and little-endian bytes in that order: what the coordinator signs and the node checks.

Nodes send the *difference* between their trained weights and the global model they
started from (`subtract`), never the weights themselves: SecAgg+ quantises every value
within a clipping range (Flower's default +-8), which a delta of one round fits while
the weights need not; `clip` bounds it and says how many values it had to clip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from trainer.federated import GlobalModelError

Arrays = list[NDArray[np.float32]]

_DIGEST_DOMAIN = b"fame-node/model-arrays/v1\n"


def state_arrays(net: nn.Module) -> Arrays:
    """The module's state as float32 arrays, in ``state_dict()`` order (copies)."""
    return [
        np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).copy()
        for t in net.state_dict().values()
    ]


def load_arrays(net: nn.Module, arrays: Sequence[NDArray[np.generic]]) -> None:
    """Load `arrays` into `net` after checking count, shapes and values.

    Raises GlobalModelError naming the first array that does not fit: a model of another
    architecture, a truncated list, or values that are not finite.
    """
    state = net.state_dict()
    if len(arrays) != len(state):
        raise GlobalModelError(
            f"received {len(arrays)} arrays, this node's model has {len(state)}: the global "
            "model is of another architecture; the coordinator must send the model the "
            "federation's nodes run"
        )
    loaded: dict[str, torch.Tensor] = {}
    for i, ((name, own), got) in enumerate(zip(state.items(), arrays, strict=True)):
        arr = np.asarray(got)
        if tuple(arr.shape) != tuple(own.shape):
            raise GlobalModelError(
                f"array {i} ({name}) has shape {tuple(arr.shape)}, expected "
                f"{tuple(own.shape)}: the global model is of another architecture"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise GlobalModelError(f"array {i} ({name}) has dtype {arr.dtype}, expected float")
        if not np.isfinite(arr).all():
            raise GlobalModelError(f"array {i} ({name}) holds NaN or infinite values")
        loaded[name] = torch.from_numpy(np.array(arr, dtype=np.float32)).to(own.dtype)
    net.load_state_dict(loaded, strict=True)


def arrays_digest(arrays: Sequence[NDArray[np.generic]]) -> str:
    """Hex sha256 over every array's dtype, shape and little-endian bytes, in order."""
    h = hashlib.sha256(_DIGEST_DOMAIN)
    h.update(len(arrays).to_bytes(8, "little"))
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header = f"{a.dtype.str}|{','.join(str(d) for d in a.shape)}\n".encode("ascii")
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        h.update(a.tobytes(order="C"))
    return h.hexdigest()


def subtract(a: Sequence[NDArray[np.generic]], b: Sequence[NDArray[np.generic]]) -> Arrays:
    """``a - b`` array by array (shapes must match)."""
    _same_layout(a, b)
    return [
        np.asarray(x, np.float32) - np.asarray(y, np.float32) for x, y in zip(a, b, strict=True)
    ]


def add(a: Sequence[NDArray[np.generic]], b: Sequence[NDArray[np.generic]]) -> Arrays:
    """``a + b`` array by array (shapes must match)."""
    _same_layout(a, b)
    return [
        np.asarray(x, np.float32) + np.asarray(y, np.float32) for x, y in zip(a, b, strict=True)
    ]


def mix(
    own: Sequence[NDArray[np.generic]], other: Sequence[NDArray[np.generic]], share: float
) -> Arrays:
    """``share * own + (1 - share) * other``: FLAMES's aggregation keeping `share` of own."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share of the node's own weights {share}, expected 0 <= share < 1")
    _same_layout(own, other)
    return [
        share * np.asarray(x, np.float32) + (1.0 - share) * np.asarray(y, np.float32)
        for x, y in zip(own, other, strict=True)
    ]


def clip(arrays: Sequence[NDArray[np.generic]], bound: float) -> tuple[Arrays, int]:
    """Every value within ``[-bound, bound]``, and how many values had to be clipped."""
    if not bound > 0:
        raise ValueError(f"clipping bound {bound}, expected > 0")
    out: Arrays = []
    clipped = 0
    for arr in arrays:
        a = np.asarray(arr, np.float32)
        clipped += int((np.abs(a) > bound).sum())
        out.append(np.clip(a, -bound, bound))
    return out, clipped


def _same_layout(a: Sequence[NDArray[np.generic]], b: Sequence[NDArray[np.generic]]) -> None:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise GlobalModelError(
            f"array lists of different layouts ({len(a)} vs {len(b)} arrays, or shapes "
            "differ): both must be states of the same architecture"
        )
