"""Image datasets through torchvision's own classes (and their download code): MNIST, Fashion-MNIST,
CIFAR-10, and ImageFolder for a user's own pictures.

Every image is held in memory as uint8 [N, C, H, W] and served as one field ``x`` scaled to [-1, 1]
at the centre of its 1/256 bin, ``(u + 0.5) / 128 - 1`` (the mean of the uniform dequantisation
that bits/dim uses), with the class label as ``cond``. Horizontal flips (where they make sense: not
digits) double the index range (index i >= N is image i - N mirrored), so the data order stays a pure
function of ``(seed, epoch)`` and resume stays exact. ``reference()`` draws from the test split.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from fmkit.plugin import DataError, DataInfo, Dataset, DependencyError, FieldInfo, Indices, State
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

MNIST_FILES = {  # torchvision's raw name -> accepted source names (the shared copy's rebuilt training images)
    "train-images-idx3-ubyte": ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte",
                                "train-images-idx3-ubyte-recon.gz"),
    "train-labels-idx1-ubyte": ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"),
    "t10k-images-idx3-ubyte": ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
    "t10k-labels-idx1-ubyte": ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"),
}


def data_root(root: str | None, folder: str) -> Path:
    """``root`` if given, else ``$FMKIT_DATA_DIR/<folder>``, else ``~/.cache/fmkit/data/<folder>``."""
    if root:
        return Path(root).expanduser()
    base = os.environ.get("FMKIT_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "fmkit" / "data") / folder


def cache_dir() -> Path:
    """Where the plugin lays files out for torchvision and caches classifier weights."""
    return Path(os.environ.get("FMKIT_CACHE_DIR", Path.home() / ".cache" / "fmkit")) / "image"


def _torchvision():
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - a dependency of the plugin
        raise DependencyError("torchvision is not installed", where="fmkit-image",
                              fix="pip install 'torchvision==0.26.*'") from exc
    return torchvision


#: the largest IDX file the cache accepts (header included): MNIST's training images are 47 MB; a
#: header declaring more is refused before anything is decompressed (a gzip bomb posing as IDX data)
IDX_MAX_BYTES = 512 * 2**20


def _cache_key(src: Path) -> str:
    """A stable name for the cache folder of ``src``: a digest of its resolved path, the same in every
    process (``hash(str)`` is salted per process, which left one more copy of MNIST per run)."""
    return hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:16]


def _idx_header(f, name: str, where: Path) -> tuple[bytes, tuple[int, ...]]:
    """Read and check the header of an IDX file of unsigned bytes (LeCun's format: two zero bytes,
    type 0x08, the number of dimensions, then each dimension as a big-endian uint32); returns the
    header bytes and the dimensions. ``name`` (e.g. ``train-labels-idx1-ubyte``) gives the expected
    number of dimensions."""
    ndim = int(name.split("-idx")[1][0])
    fix = "the file is damaged or not an MNIST IDX file: copy it again, or set download: true"
    magic = f.read(4)
    if not magic:
        raise DataError(f"{where.name} is empty (0 bytes)", where=str(where), fix=fix)
    if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or magic[3] != ndim:
        raise DataError(f"{where.name} is not an IDX file of {ndim}-D unsigned bytes (its first bytes are "
                        f"{magic.hex()}, expected 000008{ndim:02x})", where=str(where), fix=fix)
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{where.name} ends inside its header", where=str(where), fix=fix)
    dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    size = 4 + 4 * ndim + int(np.prod(dims, dtype=object))
    if min(dims) < 1 or size > IDX_MAX_BYTES:
        raise DataError(f"{where.name} declares {'x'.join(map(str, dims))} values ({size:,} bytes); an IDX file "
                        f"here holds at least one and at most {IDX_MAX_BYTES:,} bytes", where=str(where), fix=fix)
    return magic + raw_dims, dims


def _copy_idx(found: Path, dst: Path, name: str) -> tuple[int, ...]:
    """Decompress (or copy) the IDX file ``found`` to ``dst``, exactly the bytes its header declares and
    no more; on any refusal nothing is left at ``dst`` (written through ``dst.part``). Returns its dims."""
    tmp = dst.with_suffix(".part")
    opener = gzip.open if found.suffix == ".gz" else open
    fix = "the file is corrupt or truncated: copy it again, or set download: true"
    try:
        with opener(found, "rb") as f, open(tmp, "wb") as g:
            header, dims = _idx_header(f, name, found)
            g.write(header)
            left = int(np.prod(dims, dtype=object))
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise DataError(f"{found.name} ends early: its header declares {'x'.join(map(str, dims))} "
                                    f"values and {left:,} bytes of them are missing", where=str(found), fix=fix)
                g.write(chunk)
                left -= len(chunk)
            if f.read(1):
                raise DataError(f"{found.name} holds more data than its header declares ({'x'.join(map(str, dims))} "
                                "values)", where=str(found), fix=fix)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    except (OSError, EOFError, zlib.error) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DataError(f"no space left on the device to decompress {found.name}", where=str(dst.parent),
                            fix="free disk space (or point FMKIT_CACHE_DIR elsewhere) and try again") from None
        raise DataError(f"cannot read {found.name}: {exc}", where=str(found), fix=fix) from None
    tmp.replace(dst)
    return dims


def _cached_dims(dst: Path, name: str) -> tuple[int, ...] | None:
    """The dims of a complete cached copy ``dst`` (its size matches its header), else None."""
    try:
        with open(dst, "rb") as f:
            _, dims = _idx_header(f, name, dst)
        return dims if dst.stat().st_size == 4 + 4 * len(dims) + int(np.prod(dims, dtype=object)) else None
    except (OSError, DataError):
        return None


def _remove_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def layout_mnist(src: Path, kind: str = "MNIST") -> Path:
    """A torchvision root for ``kind`` (MNIST/FashionMNIST) built from the IDX files in ``src``.

    torchvision reads ``<root>/<kind>/raw/<name>`` uncompressed; ``src`` may hold the official
    ``.gz`` names, uncompressed ones, or (MNIST) ``train-images-idx3-ubyte-recon.gz``. The files are
    decompressed into the plugin's cache once (keyed by a digest of the source folder's path, the same
    in every process) and reused. Each file's header is checked first and only the bytes it declares
    are decompressed (at most IDX_MAX_BYTES); a file that is refused leaves nothing in the cache.
    """
    root = cache_dir() / "torchvision" / _cache_key(src)
    raw = root / kind / "raw"
    dims: dict[str, tuple[tuple[int, ...], Path]] = {}
    made: list[Path] = []  # the copies this call wrote: removed again when it refuses
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name, candidates in MNIST_FILES.items():
            dst = raw / name
            found = next((src / c for c in candidates if (src / c).is_file()), None)
            cached = _cached_dims(dst, name)
            if cached is not None:
                dims[name] = (cached, found or dst)
                continue
            if found is None:
                raise DataError(f"{kind}: no {name} file (one of {', '.join(candidates)})", where=str(src),
                                fix=f"put the IDX files in {src}, or set download: true to fetch them")
            dims[name] = (_copy_idx(found, dst, name), found)
            made.append(dst)
        for split in ("train", "t10k"):
            (idims, ifile), (ldims, lfile) = dims[f"{split}-images-idx3-ubyte"], dims[f"{split}-labels-idx1-ubyte"]
            if idims[0] != ldims[0]:
                raise DataError(f"{kind}: {ifile.name} holds {idims[0]} images but {lfile.name} {ldims[0]} labels",
                                where=str(src), fix="use the images and labels files of one release")
    except BaseException:
        for dst in made:
            dst.unlink(missing_ok=True)
        _remove_empty(raw, cache_dir())
        raise
    return root


class ImageDataset(Dataset):
    """In-memory uint8 images [N, C, H, W] + labels [N]; a held-out split for ``reference()``.

    Args:
        train: the training images, uint8 [N, C, H, W].
        labels: their classes [N] (integers from 0).
        test: held-out images uint8 [M, C, H, W] for metrics; None: metrics draw from ``train``.
        test_labels: their classes [M].
        classes: the class names; None: "0", "1", ... up to the largest label.
        hflip: add each training image mirrored left-right as an example of its own (twice the data).
        name: the dataset's name in errors and provenance.
    """

    def __init__(self, train: Tensor, labels: Tensor, test: Tensor | None = None, test_labels: Tensor | None = None,
                 *, classes: list[str] | None = None, hflip: bool = False, name: str = "images") -> None:
        if train.dtype != torch.uint8 or train.dim() != 4:
            raise DataError(f"{name}: images must be uint8 [N, C, H, W], got {train.dtype} {tuple(train.shape)}",
                            where=name, fix="this is a bug of the loader")
        self.images, self.labels = train.contiguous(), labels.long()
        self.test = test.contiguous() if test is not None else None
        self.test_labels = test_labels.long() if test_labels is not None else None
        self.hflip = hflip
        self.classes = classes or [str(i) for i in range(int(self.labels.max()) + 1)]
        self.name = name
        self.info = DataInfo(fields={"x": FieldInfo(tuple(train.shape[1:]))}, num_cond_classes=len(self.classes),
                             meta={"dataset": name, "classes": self.classes, "pixel_range": (-1.0, 1.0),
                                   "levels": 256,
                                   # 8-bit pixels: their likelihood needs dequantisation (bits/dim >= 0)
                                   "likelihood": {"dequantize": {"levels": 256, "low": -1.0, "high": 1.0}}})

    def __len__(self) -> int:
        return len(self.images) * (2 if self.hflip else 1)

    @staticmethod
    def scale(u8: Tensor) -> Tensor:
        """uint8 -> [-1, 1] at the centre of each 1/256 bin."""
        return (u8.float() + 0.5) / 128.0 - 1.0

    @staticmethod
    def quantise(x: Tensor) -> Tensor:
        """[-1, 1] -> uint8, clamped: the inverse of :meth:`scale` (each 1/256 bin back to its level)."""
        return ((x.detach().float().clamp(-1, 1) + 1) * 128).floor().clamp(0, 255).to(torch.uint8)

    def __getitem__(self, i: int) -> State:
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def get_batch(self, idx: Indices) -> State:
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        n = len(self.images)
        flip = i >= n
        img = self.images[i % n]
        if self.hflip and bool(flip.any()):
            img = torch.where(flip[:, None, None, None], img.flip(-1), img)
        return {"x": self.scale(img), "cond": self.labels[i % n]}

    def collate(self, items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """uint8 images and labels of ``train`` or ``test`` (test falls back to train when absent)."""
        if name == "test" and self.test is not None:
            return self.test, self.test_labels  # type: ignore[return-value]
        return self.images, self.labels

    def reference(self, n: int, seed: int = 0) -> State:
        """``n`` test images (training images when the data has no test split), deterministic in ``seed``."""
        imgs, labels = self.split("test")
        n = min(n, len(imgs))
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(imgs), generator=g)[:n]
        return {"x": self.scale(imgs[idx]), "cond": labels[idx]}


class TorchvisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str | None = Field(None, description="data folder (default: $FMKIT_DATA_DIR/<dataset>, "
                                               "else ~/.cache/fmkit/data/<dataset>)")
    download: bool = Field(False, description="fetch the files with torchvision's download code when missing")
    limit: int | None = Field(None, ge=1, description="use only the first N training images (tests, pilots)")
    test_limit: int | None = Field(None, ge=1, description="use only the first N test images")
    hflip: bool | None = Field(None, description="horizontal flips (default: off for digits, on for CIFAR-10)")


def _finish(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, limit, test_limit, **kw) -> ImageDataset:
    if limit:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if test_limit:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    return ImageDataset(train_x, train_y, test_x, test_y, **kw)


def _mnist_like(kind: str, folder: str, root, download, limit, test_limit, hflip) -> ImageDataset:
    tv = _torchvision()
    src = data_root(root, folder)
    cls = getattr(tv.datasets, kind)
    if download:
        tvroot = src
        src.mkdir(parents=True, exist_ok=True)
    else:
        if not src.is_dir():
            raise DataError(f"{kind}: no data folder {src}", where="data.root",
                            fix=f"set FMKIT_DATA_DIR (the folder holding {folder}/), data.root, or data.download=true")
        tvroot = layout_mnist(src, kind)
    try:
        tr, te = cls(str(tvroot), train=True, download=download), cls(str(tvroot), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(f"{kind}: {exc}", where=str(tvroot), fix="set data.download=true or fix data.root") from None
    return _finish(tr.data[:, None], tr.targets, te.data[:, None], te.targets, limit, test_limit,
                   classes=list(tr.classes), hflip=bool(hflip), name=folder)


def build_mnist(root=None, download=False, limit=None, test_limit=None, hflip=None) -> ImageDataset:
    """MNIST digits, 1x28x28 (LeCun et al. 1998).

    Args:
        root: the data folder; None: ``$FMKIT_DATA_DIR/mnist``, else ``~/.cache/fmkit/data/mnist``.
        download: fetch missing files with torchvision's download code.
        limit: use only the first N training images (tests, pilots); None: all.
        test_limit: use only the first N test images; None: all.
        hflip: add the training images mirrored left-right (twice the data); None: off.

    Returns:
        The training split with the test split held out for metrics (uint8 [N, 1, 28, 28], labels [N]).
    """
    return _mnist_like("MNIST", "mnist", root, download, limit, test_limit, hflip)


def build_fashion_mnist(root=None, download=False, limit=None, test_limit=None, hflip=None) -> ImageDataset:
    """Fashion-MNIST, 1x28x28 (Xiao et al. 2017); flips off by default (the recipes may turn them on).

    Args:
        root: the data folder; None: ``$FMKIT_DATA_DIR/fashion_mnist``, else ``~/.cache/fmkit/data/fashion_mnist``.
        download: fetch missing files with torchvision's download code.
        limit: use only the first N training images (tests, pilots); None: all.
        test_limit: use only the first N test images; None: all.
        hflip: add the training images mirrored left-right (twice the data); None: off.

    Returns:
        The training split with the test split held out for metrics (uint8 [N, 1, 28, 28], labels [N]).
    """
    return _mnist_like("FashionMNIST", "fashion_mnist", root, download, limit, test_limit, hflip)


def build_cifar10(root=None, download=False, limit=None, test_limit=None, hflip=None) -> ImageDataset:
    """CIFAR-10, 3x32x32 (Krizhevsky 2009), through torchvision.datasets.CIFAR10 (its download code).

    Args:
        root: the data folder; None: ``$FMKIT_DATA_DIR/cifar10``, else ``~/.cache/fmkit/data/cifar10``.
        download: fetch missing files with torchvision's download code.
        limit: use only the first N training images (tests, pilots); None: all.
        test_limit: use only the first N test images; None: all.
        hflip: add the training images mirrored left-right (twice the data); None: on.

    Returns:
        The training split with the test split held out for metrics (uint8 [N, 3, 32, 32], labels [N]).
    """
    tv = _torchvision()
    src = data_root(root, "cifar10")
    if not download and not (src / "cifar-10-batches-py").is_dir():
        raise DataError(f"CIFAR-10: no cifar-10-batches-py folder in {src}", where="data.root",
                        fix="set data.download=true (torchvision fetches and checks it), or point data.root at "
                            "the folder holding cifar-10-batches-py/")
    try:
        tr = tv.datasets.CIFAR10(str(src), train=True, download=download)
        te = tv.datasets.CIFAR10(str(src), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(f"CIFAR-10: {exc}", where=str(src), fix="set data.download=true or fix data.root") from None
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return _finish(to(tr.data), torch.tensor(tr.targets), to(te.data), torch.tensor(te.targets), limit, test_limit,
                   classes=list(tr.classes), hflip=True if hflip is None else hflip, name="cifar10")


class ImageFolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with one sub-folder of images per class (torchvision ImageFolder)")
    test_root: str | None = Field(None, description="a held-out folder of the same layout "
                                                    "(default: none; metrics use training images)")
    size: int = Field(64, ge=4, description="images are resized (shorter side) and centre-cropped to size x size")
    channels: int = Field(3, description="3 (RGB) or 1 (grey)")
    hflip: bool = Field(True, description="horizontal flips")
    limit: int | None = Field(None, ge=1, description="use only the first N images")


def _load_folder(root: str, size: int, channels: int, limit: int | None) -> tuple[Tensor, Tensor, list[str]]:
    tv = _torchvision()
    from torchvision.transforms import v2

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"no image folder {path}", where="data.root",
                        fix="point data.root at a folder of class sub-folders")
    tf = v2.Compose([v2.Grayscale() if channels == 1 else v2.RGB(), v2.Resize(size), v2.CenterCrop(size),
                     v2.PILToTensor()])
    try:
        ds = tv.datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{path}: {exc}", where="data.root",
                        fix="one sub-folder per class, holding .png/.jpg files") from None
    n = min(len(ds), limit) if limit else len(ds)
    imgs, labels = [], []
    for i in range(n):
        try:
            img, y = ds[i]
        except OSError as exc:
            raise DataError(f"cannot read image {ds.samples[i][0]}: {exc}", where=ds.samples[i][0],
                            fix="remove or replace the file") from None
        imgs.append(img)
        labels.append(y)
    return torch.stack(imgs), torch.tensor(labels), list(ds.classes)


def build_image_folder(root: str, test_root=None, size=64, channels=3, hflip=True, limit=None) -> ImageDataset:
    """A user's own images: ``root/<class>/*.png``, resized and centre-cropped to ``size``.

    Args:
        root: a folder with one sub-folder of images per class (torchvision's ImageFolder layout).
        test_root: a held-out folder of the same classes for metrics; None: metrics use training images.
        size: side in pixels: the shorter side is resized to it, then centre-cropped to size x size.
        channels: 3 (RGB) or 1 (grey).
        hflip: add the training images mirrored left-right (twice the data).
        limit: use only the first N images of ``root``; None: all.

    Returns:
        The images, uint8 [N, channels, size, size], labelled by sub-folder (sorted class names).
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}", where="data.channels", fix="use 1 or 3")
    x, y, classes = _load_folder(root, size, channels, limit)
    tx = ty = None
    if test_root:
        tx, ty, tclasses = _load_folder(test_root, size, channels, None)
        if tclasses != classes:
            raise DataError(f"test_root's classes {tclasses} differ from root's {classes}", where="data.test_root",
                            fix="use the same class sub-folders in both")
    return ImageDataset(x, y, tx, ty, classes=classes, hflip=hflip, name=Path(root).name)
