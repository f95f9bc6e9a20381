"""MNIST from the vendored IDX files: checksums, splits, binarization and device-resident batches.

The four standard MNIST files are read directly (gzip + the IDX header), never downloaded.
Each file's md5 is checked before it is parsed, so a truncated or corrupted copy is refused with
a message naming the file, instead of producing garbage digits.

Splits (fixed and unshuffled, as in the IWAE paper's protocol):

============  =========================================  ========
split         images                                     count
============  =========================================  ========
``train``     official training file, images 0..49,999   50,000
``valid``     official training file, images 50,000..    10,000
``test``      official test file                         10,000
============  =========================================  ========

With ``data_split="iwae"`` train is images 0..59,599 and valid the last 400 (:data:`DATA_SPLITS`).

Binarization follows Salakhutdinov & Murray (2008) and Burda et al. (2016): a binary image is
drawn as x_i ~ Bernoulli(intensity_i). Training draws a fresh binarization for every batch
(*dynamic* binarization); evaluation uses one seeded draw so that every model is scored on the
same binary images.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import DataError

IMAGE_SIDE = 28
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10

NUM_TRAIN = 50_000
NUM_VALID = 10_000
NUM_TEST = 10_000

#: Environment variable that overrides the default data folder.
DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"

SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class IdxFile:
    """One of the four MNIST files: its name, checksum and the header we expect inside."""

    filename: str
    md5: str
    num_bytes: int
    magic: int
    shape: tuple[int, ...]


# The published md5 sums (the ones torchvision checks) and sizes of the .gz files.
MNIST_FILES = {
    ("train", "images"): IdxFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422, 2051, (60_000, IMAGE_SIDE, IMAGE_SIDE)),  # noqa: E501
    ("train", "labels"): IdxFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28_881, 2049, (60_000,)),  # noqa: E501
    ("test", "images"): IdxFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1_648_877, 2051, (10_000, IMAGE_SIDE, IMAGE_SIDE)),  # noqa: E501
    ("test", "labels"): IdxFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4_542, 2049, (10_000,)),  # noqa: E501
}  # fmt: skip

#: How the 60,000 official training images divide into the train and valid splits: the number
#: of leading images that train (the rest validate). ``standard``: 50,000 / 10,000, this
#: project's default; ``iwae``: 59,600 / the last 400, the protocol of Burda, Grosse &
#: Salakhutdinov (2016), who trained on the 60,000 training images less 400 kept for validation.
DATA_SPLITS = {"standard": NUM_TRAIN, "iwae": NUM_TRAIN + NUM_VALID - 400}


def _split_rows(split: str, data_split: str) -> tuple[str, slice]:
    """(file group, rows of that file) of a split under a train/valid division."""
    if data_split not in DATA_SPLITS:
        raise DataError(f"unknown data split {data_split!r}; choose one of {', '.join(DATA_SPLITS)}")
    num_train = DATA_SPLITS[data_split]
    rows = {
        "train": ("train", slice(0, num_train)),
        "valid": ("train", slice(num_train, NUM_TRAIN + NUM_VALID)),
        "test": ("test", slice(0, NUM_TEST)),
    }
    if split not in rows:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    return rows[split]


@dataclass(frozen=True)
class MNISTSplit:
    """Images of one split as grayscale intensities, with their digit labels.

    Attributes
    ----------
    images : Tensor
        ``(N, NUM_PIXELS)`` float32 intensities in [0, 1] (pixel value / 255).
    labels : Tensor
        ``(N,)`` int64 digit labels.
    name : str
        ``"train"``, ``"valid"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> MNISTSplit:
        return MNISTSplit(self.images.to(device), self.labels.to(device), self.name)


def default_data_dir() -> Path:
    """The folder that holds ``MNIST/raw/``: ``$PYRO_VAE_DATA_DIR``, else the checkout's ``data/``.

    In a source checkout (the README's ``pip install -e .``) the vendored copy next to the
    package is found wherever the command runs; otherwise ``./data`` is used.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    checkout_data = Path(__file__).resolve().parents[1] / "data"
    if (checkout_data / "MNIST" / "raw").is_dir():
        return checkout_data
    return Path("data")


def resolve_raw_dir(data_dir: str | os.PathLike | None) -> Path:
    """Find the folder holding the four ``.gz`` files.

    ``data_dir`` follows torchvision's layout (``data_dir/MNIST/raw/*.gz``); for convenience the
    ``MNIST`` folder or the ``raw`` folder itself are accepted too.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    probe = MNIST_FILES[("train", "images")].filename
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if (candidate / probe).exists():
            return candidate
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist; pass --data-dir pointing at a folder that "
            f"holds MNIST/raw/ with the four MNIST .gz files (the repository ships one in data/)"
        )
    return root / "MNIST" / "raw"  # the canonical place; read_idx names the missing file


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_idx(path: Path, expected: IdxFile) -> torch.Tensor:
    """Read one IDX ``.gz`` file after checking its md5, size and header.

    Returns
    -------
    Tensor
        uint8 tensor of shape ``expected.shape``.

    Raises
    ------
    DataError
        If the file is missing, has the wrong checksum, or its header is not the expected one.
    """
    if not path.is_file():
        raise DataError(
            f"MNIST file {path} is missing; expected {expected.filename} "
            f"({expected.num_bytes:,} bytes) in a folder laid out as MNIST/raw/; "
            f"copy it from the repository's data/MNIST/raw/ or pass --data-dir"
        )
    return _read_checked_idx(str(path.resolve()), os.stat(path).st_mtime_ns, expected)


@lru_cache(maxsize=8)
def _read_checked_idx(path_str: str, mtime_ns: int, expected: IdxFile) -> torch.Tensor:
    # Cached per (path, modification time): the test suite and notebooks load splits many times,
    # and a changed file is re-checked because its mtime changes.
    path = Path(path_str)
    size = path.stat().st_size
    checksum = _md5(path)
    if checksum != expected.md5:
        raise DataError(
            f"MNIST file {path} is corrupted or truncated: md5 {checksum} ({size:,} bytes), "
            f"expected {expected.md5} ({expected.num_bytes:,} bytes); replace it with the "
            f"original file (see data/MNIST/README.md)"
        )
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = len(expected.shape)
    header_bytes = 4 + 4 * ndim
    magic = int.from_bytes(raw[0:4], "big")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if magic != expected.magic or dims != expected.shape:
        raise DataError(
            f"MNIST file {path} has IDX header magic={magic} shape={dims}, expected "
            f"magic={expected.magic} shape={expected.shape}"
        )
    flat = torch.frombuffer(bytearray(raw[header_bytes:]), dtype=torch.uint8)
    return flat.reshape(expected.shape)


def load_mnist(
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    data_split: str = "standard",
) -> MNISTSplit:
    """Load one split of MNIST as intensities in [0, 1].

    Parameters
    ----------
    split : {"train", "valid", "test"}
        Which split (see the module docstring for the rows of each).
    data_dir : path, optional
        Folder in torchvision's layout (``data_dir/MNIST/raw/*.gz``); default
        :func:`default_data_dir`.
    subset : int, optional
        Keep only the first ``subset`` images of the split (for smoke runs).
    device : torch device
        Where the returned tensors live; training slices batches from them there.
    data_split : {"standard", "iwae"}
        How the official training images divide into train and valid (:data:`DATA_SPLITS`).
    """
    group, rows = _split_rows(split, data_split)
    raw_dir = resolve_raw_dir(data_dir)
    images_file = MNIST_FILES[(group, "images")]
    labels_file = MNIST_FILES[(group, "labels")]
    images = read_idx(raw_dir / images_file.filename, images_file)[rows]
    labels = read_idx(raw_dir / labels_file.filename, labels_file)[rows]
    if subset is not None:
        if subset < 1:
            raise DataError(f"subset must be a positive number of images, got {subset}")
        images, labels = images[:subset], labels[:subset]
    intensities = images.reshape(-1, NUM_PIXELS).to(torch.float32) / 255.0
    return MNISTSplit(intensities.to(device), labels.to(torch.int64).to(device), split)


def binarize(intensities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a binary image x_i ~ Bernoulli(intensity_i), independently for every pixel.

    Called on every training batch, this is *dynamic* binarization: the model sees a fresh
    binary draw of each digit every epoch. The result has the dtype of the input (0.0 / 1.0).
    """
    return torch.bernoulli(intensities, generator=generator)


def fixed_binarization(intensities: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded binarization, identical on every device (drawn on the CPU, then moved back).

    Evaluation uses it so that every model, run and device is scored on the same binary images.
    """
    generator = torch.Generator().manual_seed(seed)
    return binarize(intensities.detach().cpu(), generator).to(intensities.device)


def minibatch_indices(
    num_items: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Index batches over a preloaded tensor: one random permutation per epoch, then slices.

    The permutation is drawn on the CPU from ``generator`` (so the data order of a seeded run is
    the same on every device and can be resumed exactly) and moved to ``device`` once per epoch;
    slicing a device-resident tensor with these indices costs no host transfer per batch.
    The last batch is smaller when ``batch_size`` does not divide ``num_items``.
    """
    if shuffle:
        order = torch.randperm(num_items, generator=generator)
    else:
        order = torch.arange(num_items)
    order = order.to(device)
    for start in range(0, num_items, batch_size):
        yield order[start : start + batch_size]


#: The tutorial's CVAE input: "a single column of pixels taken from the middle of the digit".
MIDDLE_COLUMN = 13


def column_problem(column: int) -> str | None:
    """What is wrong with ``column`` as an image column index, in one line; ``None`` if nothing.

    The one column check: the data functions raise it as a ``DataError``, the configuration as a
    ``ConfigError``, the command line as a usage error.
    """
    if not 0 <= column < IMAGE_SIDE:
        return f"column index {column} is out of range; choose 0..{IMAGE_SIDE - 1}"
    return None


def column_mask(column: int = MIDDLE_COLUMN) -> torch.Tensor:
    """Boolean mask over the ``NUM_PIXELS`` flattened pixels that selects one image column."""
    if (problem := column_problem(column)) is not None:
        raise DataError(problem)
    mask = torch.zeros(IMAGE_SHAPE, dtype=torch.bool)
    mask[:, column] = True
    return mask.reshape(NUM_PIXELS)


def split_column(images: torch.Tensor, column: int = MIDDLE_COLUMN) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(N, 784)`` images into the column ``(N, 28)`` and the rest ``(N, 756)`` (row-major order).

    This is the CVAE task of the tutorial's section 5: X is the column, Y the other 27 columns.
    """
    mask = column_mask(column).to(images.device)
    return images[:, mask], images[:, ~mask]


def merge_column(
    column_pixels: torch.Tensor, rest: torch.Tensor, column: int = MIDDLE_COLUMN
) -> torch.Tensor:
    """Inverse of :func:`split_column`: put a column and the other pixels back into ``(..., 784)`` images."""
    mask = column_mask(column).to(rest.device)
    shape = torch.broadcast_shapes(column_pixels.shape[:-1], rest.shape[:-1])
    images = rest.new_empty(*shape, NUM_PIXELS)
    images[..., mask] = column_pixels.expand(*shape, column_pixels.shape[-1]).to(rest.dtype)
    images[..., ~mask] = rest.expand(*shape, rest.shape[-1])
    return images
