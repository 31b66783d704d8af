"""Datasets held as tensors on the compute device, and their split over clients.

Every dataset is loaded whole into memory once: a minibatch is then an index gather on the
device, with no data loader, worker processes or per-sample Python in the training loop.

Sources:
* `fashion_mnist` / `mnist`: the IDX files (gzip-compressed or not). Pixels are scaled to [0, 1]
  and not normalised further, as in the LeadFL authors' FashionMNIST pipeline.
* `cifar10`: the standard `cifar-10-batches-py` pickles, normalised per channel.
* `synthetic`: a small seeded 10-class problem of 1x28x28 images for tests and smoke runs.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sim.errors import ConfigError
from sim.lazy import np, torch
from sim.rng import ROOT_SET

if TYPE_CHECKING:
    from torch import Tensor

DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "synthetic")
PARTITION_SCHEMES = ("iid", "dirichlet", "shards")

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# `apt-get update` first: on a fresh machine the package lists are empty and the install fails.
FASHION_MNIST_INSTALL_COMMAND = "apt-get update && apt-get install -y dataset-fashion-mnist"

# The four files of an (Fashion-)MNIST distribution, by split and kind.
IDX_FILE_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
# The per-channel statistics the backdoor literature's CIFAR-10 tasks normalise with.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


@dataclass
class Dataset:
    """A labelled image dataset, whole, on one device."""

    name: str
    train_x: Tensor  # [N, C, H, W] float32, already normalised
    train_y: Tensor  # [N] int64
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    trigger_hi: Tensor  # [C]: the raw data range's maximum after normalisation
    trigger_lo: Tensor  # [C]: the raw data range's minimum after normalisation

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train_x.shape[1:]
        return int(channels), int(height), int(width)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    synthetic_train_size: int = 2000,
    synthetic_test_size: int = 500,
    synthetic_noise: float = 0.35,
) -> Dataset:
    """Loads dataset `name` onto `device`.

    `data_dir` is the folder holding the files; `None` means the default location, which only
    `fashion_mnist` has. `seed` and the `synthetic_*` sizes matter only for `synthetic`.
    A missing or malformed dataset raises `ConfigError` saying what to install or where to put
    which files.
    """
    device = torch.device(device)
    if name in ("fashion_mnist", "mnist"):
        return _load_idx_dataset(name, data_dir, device)
    if name == "cifar10":
        return _load_cifar10(data_dir, device)
    if name == "synthetic":
        return make_synthetic_dataset(
            synthetic_train_size, synthetic_test_size, device, seed=seed, noise=synthetic_noise
        )
    raise ConfigError(
        f"data.dataset = {name!r} is not a known dataset; allowed: {', '.join(DATASET_NAMES)}. "
        "Set data.dataset to one of these."
    )


def check_data_files(name: str, data_dir: str | os.PathLike | None) -> None:
    """Raises the ConfigError `load_dataset` would for missing files, without reading them, so a
    run can refuse before it writes anything."""
    if name in ("fashion_mnist", "mnist"):
        _idx_files(name, data_dir)
    elif name == "cifar10":
        _cifar10_folder(data_dir)


# --------------------------------------------------------------------------------------------
# IDX ((Fashion-)MNIST)

_IDX_DTYPE_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (`.gz` or plain) into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise ConfigError(f"cannot read IDX file {path}: {error}. Replace it with an intact copy.")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(
            f"{path} is not an IDX file (its first bytes are not the IDX magic 00 00 <type> <ndim>). "
            "Point data.data_dir at the original (Fashion-)MNIST files."
        )
    if raw[2] != _IDX_DTYPE_UBYTE:
        raise ConfigError(
            f"{path} holds IDX element type 0x{raw[2]:02x}; only unsigned bytes (0x08) are "
            "supported, as in the (Fashion-)MNIST files."
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ConfigError(
            f"{path} is {len(raw)} bytes but its header (shape {shape}) needs {expected}; "
            "the file is truncated or corrupt. Replace it with an intact copy."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # Distributions differ in compression and in `-idx` vs `.idx` before the format suffix.
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _idx_files(name: str, data_dir) -> tuple[Path, dict]:
    """The folder and the four IDX files of `name`; ConfigError when any is missing."""
    if data_dir is None:
        if name != "fashion_mnist":
            raise ConfigError(
                f"data.data_dir is not set for data.dataset = {name!r}, which has no default "
                "location. Set data.data_dir to the folder holding "
                + ", ".join(stem + "(.gz)" for stem in IDX_FILE_STEMS.values())
                + "."
            )
        data_dir = FASHION_MNIST_DEFAULT_DIR
    folder = Path(data_dir)
    found = {key: _find_idx_file(folder, stem) for key, stem in IDX_FILE_STEMS.items()}
    missing = [IDX_FILE_STEMS[key] + "(.gz)" for key, path in found.items() if path is None]
    if missing:
        fix = "put the files there or set data.data_dir to the folder that holds them"
        if name == "fashion_mnist" and folder == Path(FASHION_MNIST_DEFAULT_DIR):
            fix = f"install them with `{FASHION_MNIST_INSTALL_COMMAND}` (as root) or set data.data_dir"
        raise ConfigError(
            f"{name} files missing in {folder}: {', '.join(missing)}; {fix}."
        )
    return folder, found


def _load_idx_dataset(name: str, data_dir, device: torch.device) -> Dataset:
    folder, found = _idx_files(name, data_dir)
    splits = {}
    for split in ("train", "test"):
        images = read_idx(found[(split, "images")])
        labels = read_idx(found[(split, "labels")])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"{name} {split} files disagree: images {images.shape}, labels {labels.shape}; "
                "expected [N, H, W] images and [N] labels. Replace them with the original files."
            )
        x = torch.from_numpy(images.copy()).to(device=device, dtype=torch.float32)
        splits[split] = (x.div_(255.0).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)).to(device))

    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    # Both datasets have 10 classes; a subset missing some labels still gets a 10-way model.
    num_classes = 10
    largest_label = int(max(train_y.max().item(), test_y.max().item()))
    if largest_label >= num_classes:
        raise ConfigError(
            f"{name} labels in {folder} go up to {largest_label}; (Fashion-)MNIST labels are "
            "0..9. Point data.data_dir at the original files."
        )
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        trigger_hi=torch.ones(1, device=device),
        trigger_lo=torch.zeros(1, device=device),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch files and refuses anything but plain numpy arrays.

    The batch files are pickles, and a pickle can run arbitrary code; only the globals that a
    numpy array needs are let through.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as stream:
            batch = _CifarUnpickler(stream, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            f"cannot read CIFAR-10 batch {path}: {error!r}. Expected the standard python pickle "
            "(a dict with b'data' uint8 [N, 3072] and b'labels'); replace it with an intact copy."
        )
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"CIFAR-10 batch {path} has data {data.shape} and labels {labels.shape}; expected "
            "[N, 3072] and [N]. Replace it with an intact copy."
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10_folder(data_dir) -> Path:
    """The folder holding the CIFAR-10 batches; ConfigError when any is missing."""
    needed = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    if data_dir is None:
        raise ConfigError(
            "data.data_dir is not set for data.dataset = 'cifar10', which has no default location. "
            f"Set data.data_dir to the {CIFAR10_FOLDER} folder (files {', '.join(needed)}) or "
            "its parent."
        )
    folder = Path(data_dir)
    if not (folder / CIFAR10_TEST_FILE).is_file() and (folder / CIFAR10_FOLDER).is_dir():
        folder = folder / CIFAR10_FOLDER
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"CIFAR-10 files missing in {folder}: {', '.join(missing)}. Set data.data_dir to the "
            f"{CIFAR10_FOLDER} folder of the python version of CIFAR-10, or its parent."
        )
    return folder


def _load_cifar10(data_dir, device: torch.device) -> Dataset:
    folder = _cifar10_folder(data_dir)
    train = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_FILE)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])

    mean = torch.tensor(CIFAR10_MEAN, device=device)
    std = torch.tensor(CIFAR10_STD, device=device)

    def normalised(images: np.ndarray) -> Tensor:
        x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255.0)
        return x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))

    return Dataset(
        name="cifar10",
        train_x=normalised(train_images),
        train_y=torch.from_numpy(train_labels).to(device),
        test_x=normalised(test_images),
        test_y=torch.from_numpy(test_labels).to(device),
        num_classes=10,
        trigger_hi=(1.0 - mean) / std,
        trigger_lo=(0.0 - mean) / std,
    )


# --------------------------------------------------------------------------------------------
# Synthetic


SYNTHETIC_IMAGE_BYTES = 28 * 28 * 4  # one 1x28x28 float32 image


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_synthetic_size(train_size: int, test_size: int) -> None:
    """Refuses synthetic sizes whose images cannot fit in this machine's memory."""
    needed = (train_size + test_size) * SYNTHETIC_IMAGE_BYTES
    memory = _memory_bytes()
    if memory is not None and needed > memory:
        raise ConfigError(
            f"data.synthetic_train_size={train_size} and data.synthetic_test_size={test_size} need "
            f"{needed / 2**30:.3g} GiB for the images, more than this machine's {memory / 2**30:.3g} GiB; "
            "fix: --set data.synthetic_train_size=2000"
        )


def make_synthetic_dataset(
    train_size: int,
    test_size: int,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    num_classes: int = 10,
    noise: float = 0.35,
) -> Dataset:
    """A learnable 1x28x28 classification problem drawn from `seed`.

    Each class has a fixed random prototype image; a sample is its class prototype plus
    Gaussian noise of standard deviation `noise`, clipped to [0, 1] like the (Fashion-)MNIST
    pixels. The trigger corner (rows 3-7, columns 23-25) is left dark in every prototype, as in
    real digit and clothing images, so the backdoor pattern is something a model can learn.
    """
    for field, value in (("synthetic_train_size", train_size), ("synthetic_test_size", test_size)):
        if value < num_classes:
            raise ConfigError(
                f"data.{field} = {value} is too small; it needs at least one sample per class "
                f"({num_classes}). Raise data.{field}."
            )
    generator = torch.Generator().manual_seed(int(seed))
    # Coarse 7x7 blobs upsampled to 28x28 give prototypes with image-like spatial structure.
    coarse = torch.rand(num_classes, 1, 7, 7, generator=generator)
    prototypes = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    prototypes[:, :, 3:8, 23:26] = 0.0

    def draw(size: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(size) % num_classes
        labels = labels[torch.randperm(size, generator=generator)]
        images = prototypes[labels] + noise * torch.randn(size, 1, 28, 28, generator=generator)
        return images.clamp_(0.0, 1.0), labels

    train_x, train_y = draw(int(train_size))
    test_x, test_y = draw(int(test_size))
    device = torch.device(device)
    return Dataset(
        name="synthetic",
        train_x=train_x.to(device),
        train_y=train_y.to(device),
        test_x=test_x.to(device),
        test_y=test_y.to(device),
        num_classes=num_classes,
        trigger_hi=torch.ones(1, device=device),
        trigger_lo=torch.zeros(1, device=device),
    )


# --------------------------------------------------------------------------------------------
# Partitions


def hold_out(total: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded draw of `size` of the sample indices `0..total-1` for the server's own training
    (FLTrust's root set) and the indices left for the clients: two sorted int64 tensors.

    The draw depends only on `(seed, sim.rng.ROOT_SET)`, so a resumed run holds out the same samples."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < total:
        raise ConfigError(
            f"the server's root set of {size!r} samples cannot be held out of {total} training samples: it must "
            f"be an integer in 1..{total - 1}; fix: lower server.fltrust.root_size (e.g. --set server.fltrust.root_size=100)"
        )
    order = np.random.default_rng([int(seed), ROOT_SET]).permutation(total)
    held = torch.from_numpy(np.sort(order[:size]))
    rest = torch.from_numpy(np.sort(order[size:]))
    return held, rest


def partition(
    labels: Tensor,
    num_clients: int,
    scheme: str,
    seed: int,
    *,
    dirichlet_beta: float = 0.5,
    shards_per_client: int = 2,
) -> list[Tensor]:
    """Splits the sample indices `0..len(labels)-1` over `num_clients` clients.

    Returns one int64 index tensor per client, on the device of `labels`. Each sample goes to
    at most one client and the result depends only on the arguments.

    * `iid`: a seeded shuffle cut into equal parts (the remainder of the division is unused).
    * `dirichlet`: for each class, client shares drawn from Dirichlet(`dirichlet_beta`); a
      small value gives skewed label mixes and unequal sizes (a client may get no samples).
    * `shards`: samples sorted by label, cut into `num_clients * shards_per_client` equal
      shards, `shards_per_client` random shards per client.
    """
    total = int(labels.shape[0])
    if not isinstance(num_clients, int) or num_clients < 1 or num_clients > total:
        raise ConfigError(
            f"clients.num_clients = {num_clients!r} cannot split {total} samples; it must be an "
            f"integer in 1..{total}. Lower clients.num_clients or use a larger dataset."
        )
    labels_cpu = labels.detach().to("cpu", torch.int64)
    if scheme == "iid":
        parts = _partition_iid(total, num_clients, seed)
    elif scheme == "dirichlet":
        parts = _partition_dirichlet(labels_cpu, num_clients, seed, dirichlet_beta)
    elif scheme == "shards":
        parts = _partition_shards(labels_cpu, num_clients, seed, shards_per_client)
    else:
        raise ConfigError(
            f"data.partition = {scheme!r} is not a known partition; allowed: "
            f"{', '.join(PARTITION_SCHEMES)}. Set data.partition to one of these."
        )
    return [part.to(labels.device) for part in parts]


def _partition_iid(total: int, num_clients: int, seed: int) -> list[Tensor]:
    order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))
    per_client = total // num_clients
    return [order[k * per_client : (k + 1) * per_client].clone() for k in range(num_clients)]


def _partition_dirichlet(labels: Tensor, num_clients: int, seed: int, beta: float) -> list[Tensor]:
    if not beta > 0:
        raise ConfigError(
            f"data.dirichlet_beta = {beta!r} must be > 0 (small = skewed labels, large = close to "
            "iid). Set data.dirichlet_beta to e.g. 0.5."
        )
    rng = np.random.default_rng(int(seed))
    labels_np = labels.numpy()
    per_client: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels_np):
        members = np.flatnonzero(labels_np == label)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(num_clients, float(beta)))
        # Rounded cumulative shares use every sample of the class exactly once.
        bounds = np.round(np.cumsum(shares) * len(members)).astype(np.int64)
        bounds[-1] = len(members)
        start = 0
        for client, stop in enumerate(bounds):
            per_client[client].append(members[start:stop])
            start = stop
    parts = []
    for chunks in per_client:
        indices = np.concatenate(chunks)
        rng.shuffle(indices)  # so a client's batches mix its classes
        parts.append(torch.from_numpy(indices.astype(np.int64)))
    return parts


def _partition_shards(labels: Tensor, num_clients: int, seed: int, shards_per_client: int) -> list[Tensor]:
    num_shards = num_clients * int(shards_per_client)
    if not isinstance(shards_per_client, int) or shards_per_client < 1 or num_shards > labels.shape[0]:
        raise ConfigError(
            f"data.shards_per_client = {shards_per_client!r} with {num_clients} clients needs "
            f"{num_shards} shards of {labels.shape[0]} samples; it must be an integer >= 1 with "
            "num_clients * shards_per_client <= the number of samples. Lower it."
        )
    generator = torch.Generator().manual_seed(int(seed))
    # A seeded shuffle before the stable sort breaks ties between samples of one class randomly.
    shuffled = torch.randperm(labels.shape[0], generator=generator)
    by_label = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    shard_size = labels.shape[0] // num_shards
    shard_order = torch.randperm(num_shards, generator=generator)
    parts = []
    for client in range(num_clients):
        shards = shard_order[client * shards_per_client : (client + 1) * shards_per_client]
        parts.append(torch.cat([by_label[s * shard_size : (s + 1) * shard_size] for s in shards.tolist()]))
    return parts
