"""Hostile and damaged MNIST files: the cache keeps one copy per source folder in every
process, decompresses only what each IDX header declares (a gzip bomb is refused after a few bytes,
leaving nothing in the cache), and every refusal names the bad file, not the cache folder.

The cases the old reader got wrong: a cache key salted per process (one more copy of the data per
run), a bomb's decompression kept in the cache, an empty file refused without its name.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fmkit.plugin import DataError
from fmkit_image.data import build_mnist, cache_dir, layout_mnist
from image_testlib import write_idx


def _cache_files() -> list[Path]:
    root = cache_dir()
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))


def _refused(src: Path, *needles: str) -> DataError:
    with pytest.raises(DataError) as e:
        layout_mnist(src)
    msg = e.value.render()
    for n in needles:
        assert n in msg, msg
    assert _cache_files() == [], "a refused file left something in the cache"
    return e.value


def test_one_cached_copy_whatever_process_reads_it(tmp_path):
    """The cache folder's name is a digest of the source path: a second process (another hash seed)
    reuses the first one's copy instead of writing another."""
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    layout_mnist(src)
    first = {p.parent.parent.parent for p in _cache_files()}
    code = f"from pathlib import Path; from fmkit_image.data import layout_mnist; layout_mnist(Path({str(src)!r}))"
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # another salt than this process's
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONHASHSEED=seed), check=True, timeout=120)
    assert {p.parent.parent.parent for p in _cache_files()} == first and len(first) == 1
    ds = build_mnist(root=str(src))
    assert len(ds) == 20 and len(ds.split("test")[0]) == 10


def test_a_gzip_bomb_posing_as_labels_is_refused_quickly_and_leaves_nothing(tmp_path):
    """A labels file whose header declares 20 labels followed by 64 MB of zeros (64 kB gzipped): only
    the declared bytes and one more are decompressed, then it is refused by name."""
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    with gzip.open(src / "train-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(struct.pack(">II", 2049, 20))
        zeros = bytes(1 << 20)
        for _ in range(64):
            f.write(zeros)
    t = time.perf_counter()
    err = _refused(src, "train-labels-idx1-ubyte.gz holds more data than its header declares")
    assert time.perf_counter() - t < 2.0
    assert err.where.endswith("train-labels-idx1-ubyte.gz")


def test_a_header_declaring_gigabytes_is_refused_before_decompressing(tmp_path):
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    with gzip.open(src / "train-images-idx3-ubyte-recon.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 60000, 1000, 1000))
    _refused(src, "train-images-idx3-ubyte-recon.gz declares 60000x1000x1000 values", "at most")


def test_a_bomb_of_zeros_is_not_an_idx_file(tmp_path):
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(1 << 20))
    _refused(src, "t10k-labels-idx1-ubyte.gz is not an IDX file of 1-D unsigned bytes")


def test_a_zero_byte_labels_file_is_named(tmp_path):
    """An empty labels file is refused naming the file, not with a parse error that names none."""
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    (src / "train-labels-idx1-ubyte.gz").unlink()
    (src / "train-labels-idx1-ubyte").write_bytes(b"")
    err = _refused(src, "train-labels-idx1-ubyte is empty (0 bytes)")
    assert err.where == str(src / "train-labels-idx1-ubyte")


def test_a_truncated_images_file_is_named(tmp_path):
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    data = gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes())
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))
    _refused(src, "t10k-images-idx3-ubyte.gz ends early", "100 bytes of them are missing")
    whole = gzip.compress(data)
    cut = whole[: len(whole) // 2]  # the gzip stream itself cut short
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(cut)
    _refused(src, "cannot read t10k-images-idx3-ubyte.gz", "where: " + str(src / "t10k-images-idx3-ubyte.gz"))


def test_images_and_labels_of_different_counts_are_refused(tmp_path):
    src, other = tmp_path / "mnist", tmp_path / "other"
    write_idx(src, 20, 10)
    write_idx(other, 21, 10)
    (src / "train-labels-idx1-ubyte.gz").write_bytes((other / "train-labels-idx1-ubyte.gz").read_bytes())
    _refused(src, "holds 20 images but train-labels-idx1-ubyte.gz 21 labels")


def test_a_damaged_cached_copy_is_rebuilt(tmp_path):
    src = tmp_path / "mnist"
    write_idx(src, 20, 10)
    root = layout_mnist(src)
    raw = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:10])
    assert layout_mnist(src) == root and raw.stat().st_size == 8 + 20
