import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import sim.data as data_module
from sim.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IDX_FILE_STEMS,
    load_dataset,
    make_synthetic_dataset,
    partition,
    read_idx,
)
from sim.errors import ConfigError
from simtest import requires_fashion_mnist


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def write_tiny_mnist(folder: Path, compress: bool, train_size=6, test_size=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        ("train", "images"): rng.integers(0, 256, (train_size, 28, 28), dtype=np.uint8),
        ("train", "labels"): (np.arange(train_size) % 10).astype(np.uint8),
        ("test", "images"): rng.integers(0, 256, (test_size, 28, 28), dtype=np.uint8),
        ("test", "labels"): (np.arange(test_size)[::-1] % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILE_STEMS.items():
        write_idx(folder / stem, arrays[key], compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_files_load_as_unit_range_tensors_with_their_labels(tmp_path, compress):
    arrays = write_tiny_mnist(tmp_path, compress)
    dataset = load_dataset("mnist", tmp_path, "cpu")
    assert dataset.train_x.shape == (6, 1, 28, 28) and dataset.train_x.dtype == torch.float32
    assert dataset.test_x.shape == (4, 1, 28, 28)
    expected = torch.from_numpy(arrays[("train", "images")].astype(np.float32) / 255.0).unsqueeze(1)
    assert torch.allclose(dataset.train_x, expected)
    assert dataset.train_y.tolist() == arrays[("train", "labels")].tolist()
    assert dataset.test_y.dtype == torch.int64
    assert dataset.test_y.tolist() == arrays[("test", "labels")].tolist()
    assert dataset.num_classes == 10  # fixed, though only labels 0..5 occur in this tiny set
    assert dataset.trigger_hi.tolist() == [1.0] and dataset.trigger_lo.tolist() == [0.0]


def test_idx_reader_accepts_the_dotted_file_names(tmp_path):
    arrays = write_tiny_mnist(tmp_path, compress=False)
    for stem in IDX_FILE_STEMS.values():
        (tmp_path / stem).rename(tmp_path / stem.replace("-idx", ".idx"))
    dataset = load_dataset("fashion_mnist", tmp_path, "cpu")
    assert dataset.train_y.tolist() == arrays[("train", "labels")].tolist()


def test_truncated_idx_file_is_a_config_error(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.arange(10, dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(path)


def test_missing_idx_files_name_the_files_and_the_setting(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_dataset("mnist", tmp_path, "cpu")
    assert "t10k-labels-idx1-ubyte" in str(error.value) and "data.data_dir" in str(error.value)
    with pytest.raises(ConfigError, match="data.data_dir is not set"):
        load_dataset("mnist", None, "cpu")


def test_missing_default_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEFAULT_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", None, "cpu")


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(ConfigError, match="fashion_mnist, mnist, cifar10, synthetic"):
        load_dataset("imagenet", None, "cpu")


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def write_tiny_cifar(folder: Path, per_file=2):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_file).tolist(),
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(per_file)],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream, protocol=2)
        batches[name] = batch
    return batches


def test_cifar10_pickles_load_channel_first_and_normalised(tmp_path):
    batches = write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    # The parent folder is accepted as well as the batches folder itself.
    dataset = load_dataset("cifar10", tmp_path, "cpu")
    assert dataset.train_x.shape == (10, 3, 32, 32) and dataset.test_x.shape == (2, 3, 32, 32)
    assert dataset.num_classes == 10
    first = batches["data_batch_1"]
    # Row layout of the pickles: 1024 red, then 1024 green, then 1024 blue values, row-major.
    raw_green_r2_c5 = first[b"data"][0, 1024 + 2 * 32 + 5]
    expected = (raw_green_r2_c5 / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert dataset.train_x[0, 1, 2, 5].item() == pytest.approx(expected, rel=1e-5)
    assert dataset.train_y.tolist()[:2] == first[b"labels"]
    assert dataset.train_y.tolist()[8:] == batches["data_batch_5"][b"labels"]
    assert dataset.test_y.tolist() == batches["test_batch"][b"labels"]
    for channel in range(3):
        assert dataset.trigger_hi[channel].item() == pytest.approx((1 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel])
        assert dataset.trigger_lo[channel].item() == pytest.approx(-CIFAR10_MEAN[channel] / CIFAR10_STD[channel])


def test_cifar10_missing_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_tiny_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3"):
        load_dataset("cifar10", folder, "cpu")
    with pytest.raises(ConfigError, match="data.data_dir is not set"):
        load_dataset("cifar10", None, "cpu")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar10_pickle_with_foreign_globals_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_tiny_cifar(folder)
    with open(folder / "test_batch", "wb") as stream:
        pickle.dump({b"data": _RunsCode(), b"labels": [0]}, stream)
    with pytest.raises(ConfigError, match="builtins.print is not allowed"):
        load_dataset("cifar10", folder, "cpu")


# ---------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_dataset_is_seeded_balanced_and_in_unit_range():
    first = load_dataset("synthetic", None, "cpu", seed=3, synthetic_train_size=200, synthetic_test_size=50)
    again = make_synthetic_dataset(200, 50, "cpu", seed=3)
    other = make_synthetic_dataset(200, 50, "cpu", seed=4)
    assert first.train_x.shape == (200, 1, 28, 28) and first.test_x.shape == (50, 1, 28, 28)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert not torch.equal(first.train_x, other.train_x)
    assert torch.bincount(first.train_y).tolist() == [20] * 10
    assert 0.0 <= first.train_x.min().item() and first.train_x.max().item() <= 1.0


def test_synthetic_classes_are_separable_by_nearest_class_mean():
    dataset = make_synthetic_dataset(500, 200, "cpu", seed=0)
    means = torch.stack([dataset.train_x[dataset.train_y == c].mean(0) for c in range(10)])
    distances = torch.cdist(dataset.test_x.flatten(1), means.flatten(1))
    accuracy = (distances.argmin(1) == dataset.test_y).float().mean().item()
    assert accuracy > 0.9


# ---------------------------------------------------------------------------------------------
# Partitions


def assert_disjoint(parts, total):
    joined = torch.cat(parts)
    assert joined.unique().numel() == joined.numel()
    assert joined.min().item() >= 0 and joined.max().item() < total


def test_iid_partition_gives_equal_disjoint_seeded_parts():
    labels = torch.arange(103) % 10
    parts = partition(labels, 10, "iid", seed=5)
    assert [part.numel() for part in parts] == [10] * 10
    assert all(part.dtype == torch.int64 for part in parts)
    assert_disjoint(parts, 103)
    assert all(torch.equal(a, b) for a, b in zip(parts, partition(labels, 10, "iid", seed=5)))
    assert not torch.equal(parts[0], partition(labels, 10, "iid", seed=6)[0])


def test_dirichlet_partition_uses_every_sample_once_and_skews_labels():
    labels = torch.arange(2000) % 10
    parts = partition(labels, 20, "dirichlet", seed=0, dirichlet_beta=0.1)
    assert sum(part.numel() for part in parts) == 2000
    assert_disjoint(parts, 2000)
    # With beta = 0.1 most clients are dominated by one or two classes.
    top_share = [torch.bincount(labels[p], minlength=10).max().item() / p.numel() for p in parts if p.numel()]
    assert np.median(top_share) > 0.5
    again = partition(labels, 20, "dirichlet", seed=0, dirichlet_beta=0.1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(ConfigError, match="dirichlet_beta"):
        partition(labels, 20, "dirichlet", seed=0, dirichlet_beta=0.0)


def test_shard_partition_gives_each_client_its_shards_labels_only():
    labels = torch.arange(400) % 10
    parts = partition(labels, 10, "shards", seed=1, shards_per_client=2)
    assert [part.numel() for part in parts] == [40] * 10
    assert_disjoint(parts, 400)
    # 20 shards of 20 over 10 classes of 40: every shard holds one class.
    assert all(labels[part].unique().numel() <= 2 for part in parts)
    again = partition(labels, 10, "shards", seed=1, shards_per_client=2)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_bad_partition_settings_are_config_errors():
    labels = torch.arange(50) % 10
    with pytest.raises(ConfigError, match="iid, dirichlet, shards"):
        partition(labels, 5, "by_writer", seed=0)
    with pytest.raises(ConfigError, match="num_clients"):
        partition(labels, 51, "iid", seed=0)
    with pytest.raises(ConfigError, match="shards_per_client"):
        partition(labels, 10, "shards", seed=0, shards_per_client=6)


# ---------------------------------------------------------------------------------------------
# Real data


@requires_fashion_mnist
def test_real_fashion_mnist_loads_with_its_known_sizes_and_balance():
    dataset = load_dataset("fashion_mnist", None, "cpu")
    assert dataset.train_x.shape == (60000, 1, 28, 28) and dataset.test_x.shape == (10000, 1, 28, 28)
    assert dataset.num_classes == 10
    assert torch.bincount(dataset.train_y).tolist() == [6000] * 10
    assert torch.bincount(dataset.test_y).tolist() == [1000] * 10
    assert dataset.train_x.min().item() == 0.0 and dataset.train_x.max().item() == 1.0
    parts = partition(dataset.train_y, 100, "iid", seed=0)
    assert [part.numel() for part in parts] == [600] * 100
