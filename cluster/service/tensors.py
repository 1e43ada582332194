"""Arrays on the wire: raw little-endian bytes + dtype + shape (``ostracon.v1.Tensor``); never pickle."""

from __future__ import annotations

import math

import numpy as np

from ..errors import RequestError

INPUT_DTYPES = ("float32", "float64")  # what Predict accepts


def encode(array: np.ndarray):
    """An ``ostracon.v1.Tensor`` holding ``array`` as C-order little-endian bytes."""
    from ostracon.v1 import coordinator_pb2 as pb

    array = np.asarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=array.dtype.name, shape=list(array.shape), data=np.ascontiguousarray(little).tobytes())


def decode(tensor, field: str = "tensor", dtypes: tuple[str, ...] | None = None) -> np.ndarray:
    """The array a ``Tensor`` holds; a dtype outside ``dtypes`` or bytes that do not fill the shape exactly
    raise :class:`RequestError` naming ``field``."""
    if dtypes is not None and tensor.dtype not in dtypes:
        raise RequestError(f"{field}.dtype: {tensor.dtype!r} is not accepted; expected one of {', '.join(dtypes)}")
    dtype = _numeric_dtype(tensor.dtype, field)
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise RequestError(f"{field}.shape: {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise RequestError(f"{field}.data: {len(tensor.data)} bytes, but shape {list(shape)} of "
                           f"{tensor.dtype} needs {expected}")
    try:
        array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. [0, 2**62]: zero bytes, but numpy refuses the dimensions
        raise RequestError(f"{field}.shape: {list(shape)} is not a valid array shape ({exc})") from None
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable: frombuffer views are read-only


def _numeric_dtype(name: str, field: str) -> np.dtype:
    """A plain numeric dtype by its name: no objects (pickle), strings or records cross the wire."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        raise RequestError(f"{field}.dtype: {name!r} is not a numpy dtype name") from None
    if dtype.kind not in "biufc" or dtype.subdtype is not None or dtype.name != name:
        raise RequestError(f"{field}.dtype: {name!r} is not a plain numeric dtype name (e.g. float32, int64)")
    return dtype.newbyteorder("<")


def decode_inputs(tensor, input_shape: tuple[int, ...], field: str = "inputs") -> np.ndarray:
    """A batch of model inputs: ``(n, *input_shape)`` of float32/float64, with n >= 1."""
    array = decode(tensor, field, INPUT_DTYPES)
    if array.ndim != len(input_shape) + 1 or tuple(array.shape[1:]) != tuple(input_shape):
        raise RequestError(f"{field}.shape: {list(array.shape)} does not match the model input; expected "
                           f"[n, {', '.join(str(d) for d in input_shape)}]")
    if array.shape[0] == 0:
        raise RequestError(f"{field}.shape: an empty batch (n = 0); send at least one sample")
    return array
