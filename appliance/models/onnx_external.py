"""Does an ONNX model keep tensor data outside itself? Read off the protobuf wire format.

An ONNX file may store large tensors in separate "external data" files, named inside the
model (``TensorProto.data_location = EXTERNAL`` with ``external_data`` entries holding a
``location``). ONNX Runtime opening such a model by path reads those files, so weights that
no checksum covers would change every diagnosis. The node therefore loads models only from
the verified bytes in memory, and refuses any model that references external data at all:
`external_tensors` finds every such tensor, wherever ONNX allows one (graph initializers,
sparse initializers, tensors in node attributes such as ``Constant``, subgraphs of ``If`` /
``Loop`` / ``Scan``, functions and training graphs).

The node does not depend on the ``onnx`` package (only the ``train`` extra has it), so this
is a small reader of the protobuf wire format over the field numbers of ``onnx.proto``
(stable since IR version 3). It skips tensor payloads without copying them: a 13 MB model
is scanned in milliseconds. Bytes that are not a well-formed protobuf raise
`OnnxFormatError`.
"""

from __future__ import annotations

MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, FUNCTION, TRAINING = range(8)

# message -> {field number: message type of that (length-delimited) field}
_CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},
    TRAINING: {1: GRAPH, 2: GRAPH},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    FUNCTION: {7: NODE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TENSOR: {},
}
_TENSOR_NAME = 8
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_MAX_NESTING = 100  # subgraphs inside subgraphs; protobuf's own default limit is 100


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _scan(data: memoryview, start: int, end: int, kind: int, depth: int, found: list[str]) -> None:
    if depth > _MAX_NESTING:
        raise OnnxFormatError(f"messages nested more than {_MAX_NESTING} deep")
    children = _CHILDREN[kind]
    name = ""
    external = False
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise OnnxFormatError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if kind == TENSOR and field == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
                external = True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise OnnxFormatError(f"field {field} runs past the end of its message")
            if field in children:
                _scan(data, pos, stop, children[field], depth + 1, found)
            elif kind == TENSOR and field == _TENSOR_EXTERNAL_DATA:
                external = True
            elif kind == TENSOR and field == _TENSOR_NAME:
                name = bytes(data[pos:stop]).decode("utf-8", "replace")
            pos = stop
        else:  # 3 / 4: groups, which onnx.proto never uses
            raise OnnxFormatError(f"unexpected wire type {wire} at byte {pos}")
        if pos > end:
            raise OnnxFormatError("a field runs past the end of its message")
    if external:
        found.append(name or "<unnamed tensor>")


def external_tensors(model: bytes) -> list[str]:
    """Names of the tensors of `model` whose data lives in external files ([] for none).

    Raises
    ------
    OnnxFormatError
        `model` is not a well-formed protobuf (so not an ONNX model).
    """
    found: list[str] = []
    view = memoryview(model)
    _scan(view, 0, len(view), MODEL, 0, found)
    return found
