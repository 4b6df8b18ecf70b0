"""Tests of fgsmkit.datasets: the IDX format, the embedded sample, and the downloading loaders."""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import struct
import subprocess
import sys

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_write_idx_replaces_a_file_whole_or_not_at_all(tmp_path) -> None:
    # open(path, "wb") emptied the old file first: a write that failed midway (a full disk, here
    # a file-size limit) left a truncated file, which read_idx then called damaged.
    path = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(path, np.arange(3, dtype=np.uint8))
    code = ("import resource, signal, sys, numpy as np\n"
            "from fgsmkit.datasets import write_idx\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "try:\n"
            "    write_idx(sys.argv[1], np.zeros(100_000, np.uint8))\n"
            "except OSError as error:\n"
            "    print(error.errno)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=_child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str(errno.EFBIG), done.stderr
    np.testing.assert_array_equal(read_idx(path), np.arange(3, dtype=np.uint8))
    assert leftovers(tmp_path) == [path.name]
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing" / "a.idx"))):
        write_idx(tmp_path / "missing" / "a.idx", np.zeros(3, np.uint8))  # named as open() names it


@pytest.mark.parametrize("name", ["a.GZ", "a.Gz"])
def test_write_idx_compresses_by_suffix_in_any_case(tmp_path, name) -> None:
    # Only a lowercase ".gz" was compressed: "A.GZ" got raw bytes under a gzip name.
    write_idx(tmp_path / name, np.zeros(3, np.uint8))
    assert (tmp_path / name).read_bytes()[:2] == b"\x1f\x8b"


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


def test_read_idx_names_a_damaged_file_read_through_a_decompressing_file_object(tmp_path) -> None:
    # The file objects the docs name as sources decompress in read(): a cut or damaged file
    # escaped as a bare EOFError or gzip.BadGzipFile (or zipfile.BadZipFile), naming no file.
    import zipfile

    content = gzip.compress(_raw_idx(np.arange(1000, dtype=np.int32)))
    cut, flipped = tmp_path / "cut-idx1-ubyte.gz", tmp_path / "flipped-idx1-ubyte.gz"
    cut.write_bytes(content[:-20])
    flipped.write_bytes(content[:-8] + bytes([content[-8] ^ 1]) + content[-7:])  # in the stored CRC
    with zipfile.ZipFile(tmp_path / "files.zip", "w") as archive:
        archive.writestr("labels-idx1-ubyte", _raw_idx(np.arange(1000, dtype=np.int32)))
    damaged_zip = bytearray((tmp_path / "files.zip").read_bytes())
    damaged_zip[100] ^= 1  # in the member's values
    (tmp_path / "files.zip").write_bytes(bytes(damaged_zip))
    for path in (cut, flipped):
        with gzip.open(path) as handle, pytest.raises(ValueError, match=f"{path.name}.*damaged or truncated"):
            read_idx(handle)
    with zipfile.ZipFile(tmp_path / "files.zip") as archive, archive.open("labels-idx1-ubyte") as handle:
        with pytest.raises(ValueError, match="labels-idx1-ubyte.*damaged or truncated"):
            read_idx(handle)


def test_read_idx_calls_a_file_object_without_a_name_input(tmp_path) -> None:
    # gzip.open over a buffer has the name "", which the message quoted: "IDX file '' is ...".
    with pytest.raises(ValueError, match=r"^IDX input is damaged or truncated"):
        read_idx(gzip.open(io.BytesIO(gzip.compress(_raw_idx(np.arange(9, dtype=np.uint8)))[:-4])))


def test_write_idx_refuses_dtypes_the_format_lacks() -> None:
    with pytest.raises(TypeError, match="IDX cannot store"):
        write_idx(io.BytesIO(), np.zeros(2, np.int64))



def test_read_idx_accepts_a_bytes_path(tmp_path) -> None:
    # Before: AttributeError ('bytes' object has no attribute 'read').
    path = tmp_path / "a-idx1-ubyte"
    write_idx(path, np.arange(3, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(os.fsencode(path)), np.arange(3, dtype=np.uint8))


def test_read_idx_refuses_a_file_descriptor_by_name(tmp_path) -> None:
    # Before: AttributeError ('int' object has no attribute 'read').
    path = tmp_path / "a-idx1-ubyte"
    write_idx(path, np.arange(3, dtype=np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match=r"source must be a path or a binary file object; got int.*os.fdopen"):
            read_idx(fd)
    finally:
        os.close(fd)


def test_read_idx_refuses_a_text_mode_file_by_name(tmp_path) -> None:
    # Before: TypeError from struct ("a bytes-like object is required"), naming nothing.
    path = tmp_path / "a-idx1-ubyte"
    write_idx(path, np.arange(3, dtype=np.uint8))
    with open(path, encoding="latin-1") as handle:
        with pytest.raises(TypeError, match=r"a-idx1-ubyte.*text mode.*'rb'"):
            read_idx(handle)


def test_read_idx_refuses_a_file_opened_with_the_default_text_encoding_by_name(tmp_path) -> None:
    # UTF-8 cannot decode an IDX file's bytes: UnicodeDecodeError from inside read(), naming
    # neither the file nor the fix.
    raw, packed = tmp_path / "b-idx1-ubyte", tmp_path / "b-idx1-ubyte.gz"
    write_idx(raw, np.arange(200, 203, dtype=np.uint8))
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    for path in (raw, packed):
        with open(path, encoding="utf-8") as handle:
            with pytest.raises(TypeError, match=rf"{path.name}'.* text mode.*'rb'"):
                read_idx(handle)


def test_read_idx_names_the_file_when_numpy_cannot_hold_its_dimensions(tmp_path) -> None:
    # Before: NumPy's "maximum supported dimension" ValueError, naming no file.
    path = tmp_path / "deep-idx65-ubyte"
    path.write_bytes(struct.pack(">HBB65I", 0, 8, 65, *[1] * 65) + b"\x07")
    with pytest.raises(ValueError, match=r"deep-idx65-ubyte.*65 dimensions.*NumPy"):
        read_idx(path)


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


def test_mnist_sample_refuses_a_damaged_installation(monkeypatch) -> None:
    from fgsmkit.datasets import sample

    monkeypatch.setitem(sample.SAMPLE_FILES, "t10k-labels-idx1-ubyte.gz", "0" * 64)
    sample._decoded.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="t10k-labels-idx1-ubyte.gz is damaged"):
            mnist_sample("test")
    finally:
        sample._decoded.cache_clear()


def test_mnist_sample_rejects_an_unknown_split() -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        mnist_sample("validation")


# --- finding and downloading MNIST ----------------------------------------------------------

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import http.server  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from fgsmkit.datasets import (  # noqa: E402
    FASHION_MNIST,
    MNIST,
    DatasetNotFoundError,
    RemoteFiles,
    load_fashion_mnist,
    load_mnist,
    search_folders,
)

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def isolated_data_folders(tmp_path, monkeypatch) -> Path:
    """Keep the user's real cache and $FGSMKIT_DATA out of every test."""
    monkeypatch.delenv("FGSMKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "fgsmkit"


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def gz_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_idx(buffer, array, compress=True)
    return buffer.getvalue()


def write_split(folder: Path, n: int, seed: int, split: str = "test", compressed: bool = True) -> np.ndarray:
    """Write a small split into ``folder``; return its labels, which identify it."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "t10k" if split == "test" else "train"
    images, labels = make_split(n, seed)
    suffix = ".gz" if compressed else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return labels


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes``: path -> (body, mode); mode is "ok", "cut" (connection dropped
    halfway through the announced length), "slow" (answers after the client's timeout) or
    "trickle" (sends 100 bytes every 50 ms, each well within the client's timeout), "steady"
    (1000 bytes every 50 ms: 20 kB/s, slow but steady) or "late" (answers after 0.4 s, then steady)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self.server.requests.append(self.path)
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, mode = self.server.routes[self.path]
        if mode == "slow":
            time.sleep(1.5)
        if mode == "late":  # answers within the client's timeout, then sends as "steady"
            time.sleep(0.4)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if mode in ("trickle", "steady", "late"):
                piece = 100 if mode == "trickle" else 1000
                for start in range(0, len(body), piece):
                    self.wfile.write(body[start:start + piece])
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if mode == "cut":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    httpd.daemon_threads = True
    httpd.routes, httpd.requests = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def published():
    """A small "official" test split: its arrays, gzip bytes and checksums."""
    images, labels = make_split(37, seed=1)
    blobs = dict(zip(TEST_FILES, (gz_bytes(images), gz_bytes(labels))))
    sha256 = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    return images, labels, blobs, sha256


def remote_for(server, published, *mirrors: str) -> RemoteFiles:
    return dataclasses.replace(MNIST, mirrors=tuple(f"{server.url}/{m}/" for m in mirrors), sha256=published[3])


def serve(server, mirror: str, blobs: dict[str, bytes], mode: str = "ok") -> None:
    for name, blob in blobs.items():
        server.routes[f"/{mirror}/{name}"] = (blob, mode)


def assert_is_published(x: torch.Tensor, y: torch.Tensor, published) -> None:
    images, labels = published[:2]
    assert torch.equal(x, torch.from_numpy(images).float().div(255).unsqueeze(1))
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_writes_verified_files_that_later_load_offline(tmp_path, server, published) -> None:
    serve(server, "a", published[2])
    x, y = load_mnist(tmp_path, "test", remote=remote_for(server, published, "a"))
    assert_is_published(x, y, published)
    assert leftovers(tmp_path / "MNIST" / "raw") == sorted(TEST_FILES)  # no temporary files
    server.shutdown()
    assert_is_published(*load_mnist(tmp_path, "test", download=False), published)


def test_download_falls_back_to_the_next_mirror_after_a_404(tmp_path, server, published) -> None:
    serve(server, "b", published[2])
    x, y = load_mnist(tmp_path, "test", remote=remote_for(server, published, "a", "b"))
    assert_is_published(x, y, published)
    assert server.requests == ["/a/t10k-images-idx3-ubyte.gz", "/b/t10k-images-idx3-ubyte.gz",
                               "/a/t10k-labels-idx1-ubyte.gz", "/b/t10k-labels-idx1-ubyte.gz"]


def corrupted(blobs: dict[str, bytes]) -> dict[str, bytes]:
    """Same length, one byte flipped in the compressed stream's payload."""
    return {name: blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:] for name, blob in blobs.items()}


def truncated(blobs: dict[str, bytes]) -> dict[str, bytes]:
    return {name: blob[: len(blob) // 2] for name, blob in blobs.items()}


@pytest.mark.parametrize("damage", [corrupted, truncated], ids=["corrupt", "truncated"])
def test_a_damaged_file_on_one_mirror_is_replaced_from_the_next(tmp_path, server, published, damage) -> None:
    serve(server, "a", damage(published[2]))
    serve(server, "b", published[2])
    x, y = load_mnist(tmp_path, "test", remote=remote_for(server, published, "a", "b"))
    assert_is_published(x, y, published)
    assert leftovers(tmp_path / "MNIST" / "raw") == sorted(TEST_FILES)


@pytest.mark.parametrize("damage", [corrupted, truncated], ids=["corrupt", "truncated"])
def test_a_damaged_file_everywhere_is_an_error_and_leaves_nothing_behind(tmp_path, server, published,
                                                                         damage) -> None:
    serve(server, "a", damage(published[2]))
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch") as caught:
        load_mnist(tmp_path, "test", remote=remote_for(server, published, "a"))
    assert f"{server.url}/a/t10k-images-idx3-ubyte.gz" in str(caught.value)
    assert leftovers(tmp_path / "MNIST" / "raw") == []
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path, "test", download=False)


def test_a_failed_download_leaves_no_empty_folders_behind(tmp_path, server, published) -> None:
    # root/MNIST/raw was created for the download and left behind, empty, when every mirror failed.
    for root in (tmp_path / "new", tmp_path):
        with pytest.raises(DatasetNotFoundError, match="Downloading it failed"):
            load_mnist(root, "test", remote=remote_for(server, published, "nowhere"))
        assert not (tmp_path / "new").exists() and not (tmp_path / "MNIST").exists()
    assert tmp_path.is_dir()  # a folder that was there before is kept
    # One file fetched before the other failed is kept, for the next call to reuse.
    serve(server, "half", {TEST_FILES[0]: published[2][TEST_FILES[0]]})
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path, "test", remote=remote_for(server, published, "half"))
    assert leftovers(tmp_path / "MNIST" / "raw") == [TEST_FILES[0]]


def test_a_download_cut_off_midway_is_retried_elsewhere_and_never_kept(tmp_path, server, published) -> None:
    serve(server, "a", published[2], mode="cut")
    with pytest.raises(DatasetNotFoundError, match="cut off after") as caught:
        load_mnist(tmp_path, "test", remote=remote_for(server, published, "a"))
    assert "t10k-images-idx3-ubyte.gz" in str(caught.value)
    assert leftovers(tmp_path / "MNIST" / "raw") == []
    serve(server, "b", published[2])
    assert_is_published(*load_mnist(tmp_path, "test", remote=remote_for(server, published, "a", "b")), published)


def test_a_mirror_that_times_out_is_skipped(tmp_path, server, published) -> None:
    serve(server, "slow", published[2], mode="slow")
    serve(server, "b", published[2])
    remote = remote_for(server, published, "slow", "b")
    assert_is_published(*load_mnist(tmp_path, "test", remote=remote, timeout=0.3), published)


def test_a_mirror_that_trickles_is_abandoned_when_the_timeout_runs_out(tmp_path, server, published) -> None:
    # Before: timeout bounded each socket read, so a mirror sending a little every 50 ms was never
    # abandoned: the images (about 29 kB, 15 s at this rate) came from it, however long that took.
    assert len(published[2][TEST_FILES[0]]) > 20_000
    serve(server, "trickle", published[2], mode="trickle")
    serve(server, "b", published[2])
    remote = remote_for(server, published, "trickle", "b")
    assert_is_published(*load_mnist(tmp_path, "test", remote=remote, timeout=0.5), published)
    assert "/b/t10k-images-idx3-ubyte.gz" in server.requests  # the trickling mirror was abandoned
    server.routes.clear()
    serve(server, "trickle", published[2], mode="trickle")
    with pytest.raises(DatasetNotFoundError, match=r"under 10 kB/s after timeout=0.5 s"):
        load_mnist(tmp_path / "again", "test", remote=remote, timeout=0.5)


def test_a_mirror_slow_to_answer_but_steady_after_is_not_abandoned(tmp_path, server, published) -> None:
    """The rate counts from the first data: a wait for the answer is the socket timeout's business."""
    serve(server, "late", published[2], mode="late")
    assert_is_published(*load_mnist(tmp_path, "test", remote=remote_for(server, published, "late"), timeout=0.5),
                        published)


def test_a_slow_but_steady_mirror_is_not_abandoned(tmp_path, server, published) -> None:
    """20 kB/s: the images take about 1.5 s, three times the timeout, and still arrive; a deadline
    on the whole file would refuse every connection too slow to fetch it within the timeout."""
    serve(server, "steady", published[2], mode="steady")
    assert_is_published(*load_mnist(tmp_path, "test", remote=remote_for(server, published, "steady"), timeout=0.5),
                        published)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_without_a_copy_says_where_to_put_which_files(tmp_path, monkeypatch, published,
                                                              isolated_data_folders) -> None:
    monkeypatch.setenv("FGSMKIT_DATA", str(tmp_path / "env"))
    remote = dataclasses.replace(MNIST, mirrors=(f"http://127.0.0.1:{unused_port()}/mnist/",), sha256=published[3])
    with pytest.raises(DatasetNotFoundError) as caught:
        load_mnist(tmp_path / "root", "test", remote=remote, timeout=2)
    message = str(caught.value)
    for needed in [*TEST_FILES, str(tmp_path / "root"), str(tmp_path / "env" / "MNIST" / "raw"),
                   str(isolated_data_folders), "Downloading it failed"]:
        assert needed in message
    assert leftovers(tmp_path / "root" / "MNIST" / "raw") == []


def test_download_false_never_touches_the_network(tmp_path, server, published) -> None:
    serve(server, "a", published[2])
    with pytest.raises(DatasetNotFoundError, match="pass download=True"):
        load_mnist(tmp_path, "test", download=False, remote=remote_for(server, published, "a"))
    assert server.requests == []


def test_downloads_go_under_root_then_env_then_cache(tmp_path, monkeypatch, server, published,
                                                     isolated_data_folders) -> None:
    serve(server, "a", published[2])
    remote = remote_for(server, published, "a")

    def downloaded_into(folder: Path, root: Path | None) -> None:
        load_mnist(root, "test", remote=remote)
        assert leftovers(folder) == sorted(TEST_FILES)
        for name in TEST_FILES:  # so that the next download is needed
            (folder / name).unlink()

    downloaded_into(isolated_data_folders / "MNIST" / "raw", None)
    monkeypatch.setenv("FGSMKIT_DATA", str(tmp_path / "env"))
    downloaded_into(tmp_path / "env" / "MNIST" / "raw", None)
    downloaded_into(tmp_path / "root" / "MNIST" / "raw", tmp_path / "root")
    assert len(server.requests) == 3 * len(TEST_FILES)


def test_fashion_mnist_downloads_into_its_own_folder(tmp_path, server, published) -> None:
    serve(server, "f", published[2])
    remote = dataclasses.replace(FASHION_MNIST, mirrors=(f"{server.url}/f/",), sha256=published[3])
    assert_is_published(*load_fashion_mnist(tmp_path, "test", remote=remote), published)
    assert leftovers(tmp_path / "FashionMNIST" / "raw") == sorted(TEST_FILES)
    assert not (tmp_path / "MNIST").exists()


# --- search order ---------------------------------------------------------------------------


def test_search_folders_order(tmp_path, monkeypatch, isolated_data_folders) -> None:
    monkeypatch.setenv("FGSMKIT_DATA", str(tmp_path / "env"))
    assert search_folders(MNIST, tmp_path / "root") == [
        tmp_path / "root", tmp_path / "root" / "MNIST" / "raw",
        tmp_path / "env", tmp_path / "env" / "MNIST" / "raw",
        isolated_data_folders, isolated_data_folders / "MNIST" / "raw",
    ]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_folders(FASHION_MNIST)[-1] == tmp_path / "home" / ".cache" / "fgsmkit" / "FashionMNIST" / "raw"


def test_the_first_folder_holding_the_split_wins(tmp_path, monkeypatch, isolated_data_folders) -> None:
    monkeypatch.setenv("FGSMKIT_DATA", str(tmp_path / "env"))
    in_cache = write_split(isolated_data_folders / "MNIST" / "raw", 3, seed=10)
    in_env = write_split(tmp_path / "env", 4, seed=11, compressed=False)
    in_root_raw = write_split(tmp_path / "root" / "MNIST" / "raw", 5, seed=12)
    in_root = write_split(tmp_path / "root", 6, seed=13)
    expected = [in_root, in_root_raw, in_env, in_cache]
    folders = [tmp_path / "root", tmp_path / "root" / "MNIST" / "raw", tmp_path / "env",
               isolated_data_folders / "MNIST" / "raw"]
    for labels, folder in zip(expected, folders):
        _, y = load_mnist(tmp_path / "root", "test", download=False)
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        for path in folder.glob("t10k-*"):
            path.unlink()
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path / "root", "test", download=False)


def test_a_folder_with_only_half_a_split_is_skipped(tmp_path) -> None:
    write_split(tmp_path / "root", 3, seed=0)
    (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").unlink()
    complete = write_split(tmp_path / "root" / "MNIST" / "raw", 4, seed=1)
    assert torch.equal(load_mnist(tmp_path / "root", "test", download=False)[1],
                       torch.from_numpy(complete.astype(np.int64)))


def test_train_and_test_files_are_told_apart(tmp_path) -> None:
    train = write_split(tmp_path, 5, seed=0, split="train")
    test = write_split(tmp_path, 3, seed=1, split="test")
    assert load_mnist(tmp_path, "train", download=False)[1].tolist() == train.tolist()
    assert load_mnist(tmp_path, "test", download=False)[1].tolist() == test.tolist()


def test_a_corrupt_file_on_disk_is_reported_by_name(tmp_path) -> None:
    write_split(tmp_path, 3, seed=0)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path, "test", download=False)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path) -> None:
    write_split(tmp_path, 3, seed=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="do not belong together"):
        load_mnist(tmp_path, "test", download=False)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((3, 28, 28), np.uint8), np.array([0.0, 1.7, 9.0], np.float32), "labels must be integers; got float32"),
    (np.zeros((3, 28, 28), np.uint8), np.array([0, -1, 5], np.int16), r"labels must be digits 0 to 9; got .*\[-1, 5\]"),
    (np.zeros((3, 28, 28), np.uint8), np.array([0, 10, 5], np.uint8), r"labels must be digits 0 to 9; got .*\[0, 10\]"),
    (np.zeros((3, 5, 7), np.uint8), np.array([0, 1, 2], np.uint8), r"images must be 8-bit and shaped \(N, 28, 28\)"),
])
def test_files_that_are_not_mnist_digits_are_refused_by_name(tmp_path, images, labels, message) -> None:
    # Before: float labels came back truncated, labels past 9 and 5x7 images came back as they were.
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=f"MNIST test files in {re.escape(str(tmp_path))}: {message}"):
        load_mnist(tmp_path, "test", download=False)


def test_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="split must be"):
        load_mnist(tmp_path, "val", download=False)
    with pytest.raises(TypeError, match="remote must be a RemoteFiles"):
        load_mnist(tmp_path, "test", download=False, remote="https://example.org/")
    with pytest.raises(ValueError, match="mirrors must be a non-empty tuple"):
        RemoteFiles("MNIST", "https://example.org/")
    for timeout in (0, float("inf")):  # an infinite one overflowed inside the socket layer
        with pytest.raises(ValueError, match="timeout must be a positive, finite number"):
            load_mnist(tmp_path, "test", timeout=timeout)


def test_remote_files_refuse_a_digest_that_is_not_sha256() -> None:
    md5 = "9fb629c4189551a2d022fa330f9573f3"  # torchvision's MD5 of t10k-images: not what we check
    with pytest.raises(ValueError, match=r"sha256\['t10k-images-idx3-ubyte.gz'\] must be a SHA-256 digest"):
        dataclasses.replace(MNIST, sha256={"t10k-images-idx3-ubyte.gz": md5})


def test_a_file_without_a_checksum_is_never_downloaded(tmp_path, server, published) -> None:
    serve(server, "a", published[2])
    remote = dataclasses.replace(remote_for(server, published, "a"), sha256={})
    with pytest.raises(ValueError, match="no SHA-256 for 't10k-images-idx3-ubyte.gz'"):
        load_mnist(tmp_path, "test", remote=remote)
    assert server.requests == []


def test_downloaded_files_are_readable_by_others(tmp_path, server, published) -> None:
    serve(server, "a", published[2])
    load_mnist(tmp_path, "test", remote=remote_for(server, published, "a"))
    for name in TEST_FILES:
        assert (tmp_path / "MNIST" / "raw" / name).stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize("flag", ["False", "no", 0, None])
def test_download_must_be_a_bool(tmp_path, server, published, flag) -> None:
    # Before: download="False" was truthy and went to the network.
    serve(server, "a", published[2])
    with pytest.raises(TypeError, match="download must be True or False"):
        load_mnist(tmp_path, "test", download=flag, remote=remote_for(server, published, "a"))
    assert server.requests == []


@pytest.mark.parametrize("flag", ["no", "False", 0, 1])
def test_write_idx_compress_must_be_a_bool_or_none(tmp_path, flag) -> None:
    # Before: compress="no" compressed, and the file was written.
    with pytest.raises(TypeError, match="compress must be True or False"):
        write_idx(tmp_path / "a", np.zeros(2, np.uint8), compress=flag)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("fields, message", [
    (dict(mirrors=(None,)), r"mirrors\[0\] must be a base URL \(str\); got None"),
    (dict(mirrors=("https://a/", b"https://b/")), r"mirrors\[1\] must be a base URL \(str\); got b'https://b/'"),
    (dict(sha256=[("t10k-images-idx3-ubyte.gz", "a" * 64)]), r"sha256 must be a mapping .*; got list"),
    (dict(sha256={b"t10k-images-idx3-ubyte.gz": "a" * 64}), r"sha256 keys must be file names \(str\)"),
    (dict(name=None), r"name must be a str"),
])
def test_remote_files_check_their_fields_when_made(fields, message) -> None:
    # Before: accepted, then an AttributeError at download time (or at once for a list of pairs).
    with pytest.raises(TypeError, match=message):
        dataclasses.replace(MNIST, **fields)


# --- telling MNIST and Fashion-MNIST apart ----------------------------------------------------


def copy_embedded_sample(folder: Path) -> None:
    """The shipped MNIST sample files: real MNIST, with digests the loaders know."""
    from importlib import resources

    folder.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("fgsmkit.datasets") / "data" / "mnist_sample"
    for name in (*TEST_FILES, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((shipped / name).read_bytes())


def test_fashion_mnist_never_loads_mnist_files_from_a_flat_folder(tmp_path, monkeypatch) -> None:
    # Before: both datasets use the same file names, so load_fashion_mnist returned these MNIST digits.
    monkeypatch.setenv("FGSMKIT_DATA", str(tmp_path / "env"))
    copy_embedded_sample(tmp_path / "env")
    with pytest.warns(UserWarning, match="embedded MNIST sample"):
        assert torch.equal(load_mnist(split="test", download=False)[1], mnist_sample("test")[1])
    with pytest.raises(DatasetNotFoundError) as caught:
        load_fashion_mnist(split="test", download=False)
    path = tmp_path / "env" / "t10k-images-idx3-ubyte.gz"
    assert f"{path} holds MNIST" in str(caught.value)


def test_a_folder_of_the_other_dataset_is_skipped_for_the_next_one(tmp_path) -> None:
    copy_embedded_sample(tmp_path)
    fashion = write_split(tmp_path / "FashionMNIST" / "raw", 4, seed=3)
    assert load_fashion_mnist(tmp_path, "test", download=False)[1].tolist() == fashion.tolist()
    with pytest.warns(UserWarning, match="embedded MNIST sample"):
        assert torch.equal(load_mnist(tmp_path, "test", download=False)[1], mnist_sample("test")[1])


def test_fashion_mnist_is_downloaded_beside_mnist_files_in_a_flat_root(tmp_path, server, published) -> None:
    copy_embedded_sample(tmp_path)
    serve(server, "f", published[2])
    remote = dataclasses.replace(FASHION_MNIST, mirrors=(f"{server.url}/f/",), sha256=published[3])
    assert_is_published(*load_fashion_mnist(tmp_path, "test", remote=remote), published)
    assert leftovers(tmp_path / "FashionMNIST" / "raw") == sorted(TEST_FILES)


def test_mnist_never_loads_fashion_mnist_files(tmp_path, monkeypatch) -> None:
    # The published Fashion-MNIST files are not at hand: give synthetic ones their digests' role.
    from fgsmkit.datasets import mnist

    write_split(tmp_path, 3, seed=0)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(mnist.KNOWN_FILES, digest, ("FashionMNIST", "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{path} holds FashionMNIST")):
        load_mnist(tmp_path, "test", download=False)
    assert load_fashion_mnist(tmp_path, "test", download=False)[0].shape == (3, 1, 28, 28)


def test_a_subset_of_mnist_without_a_known_digest_still_loads(tmp_path) -> None:
    # Only a known digest is certain; a user's own subset or recompressed copy must not be refused.
    sample_x, sample_y = mnist_sample("test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", (sample_x[:500, 0] * 255).round().to(torch.uint8).numpy())
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", sample_y[:500].to(torch.uint8).numpy())
    assert torch.equal(load_mnist(tmp_path, "test", download=False)[1], sample_y[:500])


# --- documentation --------------------------------------------------------------------------

import inspect  # noqa: E402

from fgsmkit import datasets  # noqa: E402


def docstring_section(function: object, title: str) -> str:
    """The body of a NumPy-style docstring section, up to the next section's underlined title."""
    match = re.search(rf"^{title}\n-+\n(.*?)(?=^\w[\w ]*\n-+\n|\Z)", inspect.getdoc(function), re.M | re.S)
    return match.group(1) if match else ""


@pytest.mark.parametrize("function", [datasets.load_fashion_mnist, datasets.load_mnist, datasets.mnist_sample,
                                      datasets.read_idx, datasets.search_folders, datasets.write_idx],
                         ids=lambda f: f.__name__)
def test_every_parameter_is_documented(function) -> None:
    # Before: search_folders and load_fashion_mnist had no Parameters section.
    documented = set(re.findall(r"^(\w+) :", docstring_section(function, "Parameters"), re.M))
    assert set(inspect.signature(function).parameters) <= documented


@pytest.mark.parametrize("function, args, kwargs, error", [
    (mnist_sample, ("val",), {}, ValueError),
    (load_mnist, (), {"remote": "https://example.org/", "download": False}, TypeError),
    (load_mnist, (), {"split": "val"}, ValueError),
    (read_idx, (3,), {}, TypeError),
    (write_idx, (io.BytesIO(), np.zeros(2, np.int64)), {}, TypeError),
], ids=["mnist_sample-split", "load_mnist-remote", "load_mnist-split", "read_idx-source", "write_idx-dtype"])
def test_the_errors_raised_are_documented(function, args, kwargs, error) -> None:
    # Before: mnist_sample listed only RuntimeError, load_mnist not the TypeError for a bad remote.
    with pytest.raises(error):
        function(*args, **kwargs)
    assert re.search(rf"^{error.__name__}$", docstring_section(function, "Raises"), re.M)


def test_mnist_files_load_through_a_remote_of_any_name(tmp_path) -> None:
    """Which dataset a loader wants is the loader's, not the name of the mirrors' definition: the
    embedded sample's files (a known MNIST digest) load through a private mirror named otherwise."""
    import shutil

    from fgsmkit.datasets import sample

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(Path(sample.__file__).parent / "data" / "mnist_sample" / name, tmp_path / name)
    private = RemoteFiles(name="mnist-private", mirrors=("http://127.0.0.1:9/mnist/",))
    with pytest.warns(UserWarning, match="embedded MNIST sample"):
        x, y = load_mnist(tmp_path, "test", download=False, remote=private)
    assert torch.equal(y, mnist_sample("test")[1])
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{tmp_path / 't10k-images-idx3-ubyte.gz'} holds MNIST")):
        load_fashion_mnist(tmp_path, "test", download=False,
                           remote=RemoteFiles(name="fashion-private", mirrors=("http://127.0.0.1:9/f/",)))


def test_read_idx_names_file_contents_passed_as_a_path(tmp_path) -> None:
    import io

    buffer = io.BytesIO()
    write_idx(buffer, np.arange(6, dtype=np.uint8))
    for contents in (buffer.getvalue(), gzip.compress(buffer.getvalue())):
        with pytest.raises(TypeError, match=re.escape("source holds a file's contents, not a path; wrap them: "
                                                      "read_idx(io.BytesIO(data))")):
            read_idx(contents)


@pytest.mark.parametrize("split, count", [("train", 8000), ("test", 2000)])
def test_the_embedded_samples_files_found_on_disk_are_named_as_the_sample(tmp_path, split, count) -> None:
    # A folder holding the sample's files (copied out of the package, or a 10,000-digit subset made
    # the same way) loaded silently as "the official test set": 2,000 digits drawn from the MNIST
    # training set, so a model trained on full MNIST would be tested on digits it has seen.
    copy_embedded_sample(tmp_path)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(tmp_path))} holds fgsmkit's embedded MNIST sample "
                                         rf"\({count:,} {split} digits, drawn from the MNIST training set\), "
                                         rf"not the official {split} set") as caught:
        x, y = load_mnist(tmp_path, split, download=False)
    assert torch.equal(y, mnist_sample(split)[1]) and x.shape[0] == count
    # A program (fgsmkit reproduce) can tell it from other warnings, and read where the files are.
    from fgsmkit.datasets import SampleFilesWarning

    assert [w.message.folder for w in caught if isinstance(w.message, SampleFilesWarning)] == [tmp_path]


def test_a_download_of_the_embedded_samples_files_is_named_as_the_sample(tmp_path, server) -> None:
    # Only files found on disk were checked: the call that downloaded them (from a private mirror
    # holding the sample) returned them silently as the official split; the next call warned.
    from fgsmkit.datasets import SampleFilesWarning
    from fgsmkit.datasets.sample import SAMPLE_FILES

    copy_embedded_sample(tmp_path / "mirror")
    serve(server, "m", {name: (tmp_path / "mirror" / name).read_bytes() for name in TEST_FILES})
    remote = dataclasses.replace(MNIST, mirrors=(f"{server.url}/m/",), sha256=SAMPLE_FILES)
    for _ in range(2):  # downloading, then from disk
        with pytest.warns(SampleFilesWarning, match="holds fgsmkit's embedded MNIST sample") as caught:
            x, y = load_mnist(tmp_path / "root", "test", remote=remote)
        assert [w.message.folder for w in caught if isinstance(w.message, SampleFilesWarning)] == [
            tmp_path / "root" / "MNIST" / "raw"]
        assert torch.equal(y, mnist_sample("test")[1])
    assert len(server.requests) == 2  # the second call read the files on disk


# --- the package ----------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The environment for a child Python that imports the same fgsmkit as these tests, installed or not."""
    import fgsmkit

    env = dict(os.environ, OMP_NUM_THREADS="1")
    package_root = str(Path(fgsmkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def test_fgsmkit_datasets_is_imported_on_first_use() -> None:
    # `import fgsmkit` stays light: fgsmkit.datasets is imported by its first attribute access
    # (type checkers see it through an import under TYPE_CHECKING, which must not run).
    code = ("import sys, fgsmkit\n"
            "assert 'fgsmkit.datasets' not in sys.modules, 'imported with fgsmkit'\n"
            "assert fgsmkit.datasets is sys.modules['fgsmkit.datasets']\n"
            "x, y = fgsmkit.datasets.mnist_sample('test')\n")
    done = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("target, hint", [(None, ""), (3, r"; for a file descriptor use os.fdopen\(fd, 'wb'\)")])
def test_write_idx_refuses_a_target_that_is_neither_a_path_nor_a_file(target, hint) -> None:
    # AttributeError: 'int' object has no attribute 'write', after the array was encoded.
    with pytest.raises(TypeError, match=rf"target must be a path or a binary file object; got \w+{hint}"):
        write_idx(target, np.zeros(3, dtype=np.uint8))
