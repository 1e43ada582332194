"""The Tensor codec: raw little-endian bytes + dtype + shape, every malformed tensor a named RequestError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ostracon.cluster.errors import RequestError
from ostracon.cluster.service.tensors import decode, decode_inputs, encode
from ostracon.v1 import coordinator_pb2 as pb


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "uint8", "bool", "complex64"])
@pytest.mark.parametrize("shape", [(3,), (2, 5), (0, 4), (1, 2, 3, 4), ()])
def test_round_trip_is_exact(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    back = decode(encode(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_wire_bytes_are_little_endian_whatever_the_host_order():
    big = np.array([1.0, -2.5], dtype=">f8")
    tensor = encode(big)
    assert tensor.dtype == "float64" and list(tensor.shape) == [2]
    assert tensor.data == np.array([1.0, -2.5], dtype="<f8").tobytes()
    assert decode(tensor).tolist() == [1.0, -2.5]


def test_non_contiguous_arrays_are_sent_in_c_order():
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    assert decode(encode(array)).tolist() == array.tolist()


@pytest.mark.parametrize("tensor, field, words", [
    (pb.Tensor(dtype="float16", shape=[1, 2], data=b"\0" * 4), "inputs.dtype", "float16"),
    (pb.Tensor(dtype="int64", shape=[1, 2], data=b"\0" * 16), "inputs.dtype", "int64"),
    (pb.Tensor(dtype="", shape=[1, 2], data=b""), "inputs.dtype", "''"),
    (pb.Tensor(dtype="object", shape=[1, 2], data=pickle.dumps([1, 2])), "inputs.dtype", "object"),
    (pb.Tensor(dtype="float32", shape=[1, 2], data=b"\0" * 7), "inputs.data", "7 bytes"),
    (pb.Tensor(dtype="float64", shape=[1, 2], data=b"\0" * 8), "inputs.data", "needs 16"),
    (pb.Tensor(dtype="float32", shape=[1, -2], data=b""), "inputs.shape", "negative"),
    (pb.Tensor(dtype="float32", shape=[1, 3], data=b"\0" * 12), "inputs.shape", "[n, 2]"),
    (pb.Tensor(dtype="float32", shape=[2], data=b"\0" * 8), "inputs.shape", "[n, 2]"),
    (pb.Tensor(dtype="float32", shape=[1, 1, 2], data=b"\0" * 8), "inputs.shape", "[n, 2]"),
    (pb.Tensor(dtype="float32", shape=[0, 2], data=b""), "inputs.shape", "empty batch"),
    (pb.Tensor(dtype="float32", shape=[0, 2 ** 62], data=b""), "inputs.shape", ""),
    (pb.Tensor(), "inputs.dtype", "''"),
])
def test_malformed_inputs_are_request_errors_naming_the_field(tensor, field, words):
    with pytest.raises(RequestError) as caught:
        decode_inputs(tensor, (2,))
    assert str(caught.value).startswith(field + ":") and words in str(caught.value)


@pytest.mark.parametrize("name", ["object", "O", "S3", "U2", "f4,f4", "(2,)f4", "V8", ">f4", "f4", "nope"])
def test_only_canonical_numeric_dtype_names_decode(name):
    with pytest.raises(RequestError, match=r"^t\.dtype: "):
        decode(pb.Tensor(dtype=name, shape=[0], data=b""), "t")


def test_inputs_of_both_float_dtypes_are_accepted():
    for dtype in ("float32", "float64"):
        x = np.arange(6, dtype=dtype).reshape(3, 2)
        got = decode_inputs(encode(x), (2,))
        assert got.dtype == dtype and got.tolist() == x.tolist()
    images = np.zeros((2, 1, 4, 4), dtype=np.float32)
    assert decode_inputs(encode(images), (1, 4, 4)).shape == (2, 1, 4, 4)


def test_decoded_arrays_are_writable_copies():
    tensor = encode(np.arange(4, dtype=np.float32))
    array = decode(tensor)
    array[0] = 7.0  # torch.from_numpy warns on read-only buffers
    assert decode(tensor)[0] == 0.0
