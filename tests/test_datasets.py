"""Tests of fgsmkit.datasets: the IDX format, the embedded sample, and the downloading loaders."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fgsmkit.datasets import mnist_sample, read_idx, write_idx

IDX_NUMPY_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


# --- IDX ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    array=st.sampled_from(IDX_NUMPY_DTYPES).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    ),
    compress=st.booleans(),
)
def test_idx_round_trip_keeps_values_shape_and_dtype(array: np.ndarray, compress: bool) -> None:
    buffer = io.BytesIO()
    write_idx(buffer, array, compress=compress)
    buffer.seek(0)
    back = read_idx(buffer)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here
    assert back.flags.writeable and back.dtype.isnative


def test_idx_header_is_big_endian_per_the_format() -> None:
    buffer = io.BytesIO()
    write_idx(buffer, np.array([[1, 258]], dtype=np.int16), compress=False)
    assert buffer.getvalue() == bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 1, 2) + struct.pack(">hh", 1, 258)


def test_idx_compression_is_detected_from_content_not_name(tmp_path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw_named_gz = tmp_path / "raw.gz"
    gz_named_raw = tmp_path / "compressed-idx3-ubyte"
    write_idx(raw_named_gz, array, compress=False)
    write_idx(gz_named_raw, array, compress=True)
    assert raw_named_gz.read_bytes()[:2] == b"\x00\x00"
    assert gz_named_raw.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)


def test_write_idx_compresses_by_suffix_when_not_told(tmp_path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    write_idx(tmp_path / "a", np.zeros(3, np.uint8))
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a").read_bytes()[:2] == b"\x00\x00"


def _raw_idx(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_idx(buffer, array, compress=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated inside its header"),
        (_raw_idx(np.zeros((4, 3), np.uint8))[:-1], "truncated"),
        (_raw_idx(np.zeros((4, 3), np.float32))[:-2], "truncated"),
        (_raw_idx(np.zeros((4, 3), np.uint8)) + b"\x00", "longer than its header says"),
    ],
)
def test_read_idx_rejects_corrupt_input(data: bytes, message: str) -> None:
    for payload in (data, gzip.compress(data)):
        with pytest.raises(ValueError, match=message):
            read_idx(io.BytesIO(payload))


def test_read_idx_rejects_a_cut_off_gzip_stream_and_names_the_file(tmp_path) -> None:
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_raw_idx(np.arange(1000, dtype=np.int32)))[:-20])
    with pytest.raises(ValueError, match="cut-idx1-ubyte.gz.*(damaged|truncated)"):
        read_idx(path)


def test_write_idx_refuses_dtypes_the_format_lacks() -> None:
    with pytest.raises(TypeError, match="IDX cannot store"):
        write_idx(io.BytesIO(), np.zeros(2, np.int64))


# --- embedded sample ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split, counts",
    [
        ("train", [784, 882, 805, 828, 789, 679, 811, 882, 755, 785]),
        ("test", [217, 245, 186, 204, 191, 184, 203, 188, 189, 193]),
    ],
)
def test_mnist_sample_shapes_ranges_and_class_counts(split: str, counts: list[int]) -> None:
    x, y = mnist_sample(split)
    assert x.shape == (sum(counts), 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (sum(counts),) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Every pixel is a byte value divided by 255.
    assert torch.equal((x * 255).round() / 255, x)
    assert torch.bincount(y, minlength=10).tolist() == counts


def test_mnist_sample_returns_fresh_tensors() -> None:
    x, y = mnist_sample("test")
    x.zero_()
    y.fill_(7)
    x2, y2 = mnist_sample("test")
    assert float(x2.max()) == 1.0 and int(y2.min()) == 0


def test_mnist_sample_rejects_an_unknown_split() -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        mnist_sample("validation")
