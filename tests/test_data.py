"""MNIST loading: checksums, splits, binarization and batching."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from pyro_vae.data import (
    MNIST_FILES,
    NUM_PIXELS,
    IdxFile,
    binarize,
    fixed_binarization,
    load_mnist,
    minibatch_indices,
    read_idx,
    resolve_raw_dir,
)
from pyro_vae.errors import DataError

# Label counts of the official files, from data/MNIST/README.md's source (SOURCE.md of the
# vendored copy): train 0..9 and test 0..9.
TRAIN_FILE_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_have_documented_sizes_and_contents():
    train, valid, test = (load_mnist(s) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (50_000, 10_000, 10_000)
    assert train.images.shape == (50_000, NUM_PIXELS) and train.images.dtype == torch.float32
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    # train + valid are the official training file, in order
    counts = torch.bincount(torch.cat([train.labels, valid.labels]), minlength=10)
    assert counts.tolist() == TRAIN_FILE_LABEL_COUNTS
    assert torch.bincount(test.labels, minlength=10).tolist() == TEST_LABEL_COUNTS
    # mean raw pixel value of the official training file is 33.3184 (SOURCE.md)
    pixel_mean = torch.cat([train.images, valid.images]).mean() * 255
    assert float(pixel_mean) == pytest.approx(33.3184, abs=1e-3)


def test_subset_keeps_the_first_images():
    full = load_mnist("valid")
    sub = load_mnist("valid", subset=7)
    assert torch.equal(sub.images, full.images[:7]) and torch.equal(sub.labels, full.labels[:7])


@pytest.fixture
def copied_data(tmp_path):
    raw = resolve_raw_dir(None)
    target = tmp_path / "MNIST" / "raw"
    target.mkdir(parents=True)
    for spec in MNIST_FILES.values():
        shutil.copy(raw / spec.filename, target / spec.filename)
    return tmp_path


@pytest.mark.parametrize("layout", ["root", "MNIST", "raw"])
def test_data_dir_accepts_torchvision_layout_and_its_subfolders(copied_data, layout):
    folder = {"root": copied_data, "MNIST": copied_data / "MNIST", "raw": copied_data / "MNIST" / "raw"}[
        layout
    ]
    assert len(load_mnist("test", folder)) == 10_000


def test_truncated_file_is_refused_with_its_name(copied_data):
    path = copied_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is corrupted or truncated"):
        load_mnist("test", copied_data)


def test_corrupted_byte_is_refused(copied_data):
    path = copied_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="md5"):
        load_mnist("test", copied_data)


def test_missing_file_and_missing_folder_are_named(copied_data, tmp_path):
    (copied_data / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is missing"):
        load_mnist("valid", copied_data)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist("train", tmp_path / "nowhere")


def test_header_mismatch_is_refused(copied_data):
    spec = MNIST_FILES[("test", "labels")]
    wrong = IdxFile(spec.filename, spec.md5, spec.num_bytes, spec.magic, (9_999,))
    with pytest.raises(DataError, match="IDX header"):
        read_idx(copied_data / "MNIST" / "raw" / spec.filename, wrong)


def test_idx_parser_matches_a_direct_decode():
    raw = resolve_raw_dir(None)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as handle:
        direct = list(handle.read()[8:20])
    assert load_mnist("test").labels[:12].tolist() == direct


def test_binarization_is_unbiased_and_binary():
    intensities = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(20_000, 1)
    draws = binarize(intensities, torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = intensities[0]
    standard_error = (p * (1 - p) / 20_000).sqrt()
    assert torch.all((draws.mean(0) - p).abs() <= 4 * standard_error + 1e-12)


def test_dynamic_binarization_differs_between_draws_and_fixed_one_is_reproducible():
    images = load_mnist("valid", subset=50).images
    assert not torch.equal(binarize(images), binarize(images))
    assert torch.equal(fixed_binarization(images, 3), fixed_binarization(images, 3))
    assert not torch.equal(fixed_binarization(images, 3), fixed_binarization(images, 4))


def test_minibatches_cover_each_index_once_and_follow_the_seed():
    batches = list(minibatch_indices(1003, 100, generator=torch.Generator().manual_seed(5)))
    assert [len(b) for b in batches] == [100] * 10 + [3]
    assert sorted(torch.cat(batches).tolist()) == list(range(1003))
    again = list(minibatch_indices(1003, 100, generator=torch.Generator().manual_seed(5)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    ordered = torch.cat(list(minibatch_indices(10, 4, shuffle=False)))
    assert ordered.tolist() == list(range(10))


def test_the_iwae_division_keeps_the_last_400_training_images_for_validation():
    """Burda et al. (2016): 60,000 training images less 400 for validation; the test split is unchanged."""
    from pyro_vae.data import DATA_SPLITS, load_mnist

    assert DATA_SPLITS == {"standard": 50_000, "iwae": 59_600}
    train, valid = (load_mnist(s, data_split="iwae").images for s in ("train", "valid"))
    standard_train, standard_valid = (load_mnist(s).images for s in ("train", "valid"))
    assert train.shape[0] == 59_600 and valid.shape[0] == 400
    everything = torch.cat([standard_train, standard_valid])
    assert torch.equal(torch.cat([train, valid]), everything)
    assert torch.equal(load_mnist("test", data_split="iwae").images, load_mnist("test").images)
    with pytest.raises(DataError, match="unknown data split"):
        load_mnist("train", data_split="half")
