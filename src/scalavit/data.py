"""Datasets: the built-in Fashion-MNIST (Debian package ``dataset-fashion-mnist``) and image folders."""
import gzip
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder

from .images import to_mode

FASHION_MNIST_ROOT = Path('/usr/share/datasets/fashion-mnist')
_FASHION_MNIST_FILES = {'train': 'train', 'test': 't10k'}


def read_fashion_mnist(split: str, root: Path = FASHION_MNIST_ROOT) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, 28, 28] and labels as int64 [N] of the ``train`` (60,000) or ``test`` (10,000) split."""
    prefix = Path(root) / _FASHION_MNIST_FILES[split]
    images_path, labels_path = Path(f'{prefix}-images-idx3-ubyte.gz'), Path(f'{prefix}-labels-idx1-ubyte.gz')
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} is missing; install the Debian package with "
                "`sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist`, "
                "or give the folder holding the four *-ubyte.gz files as --data")
    images = _read_idx(images_path, magic=2051)
    labels = _read_idx(labels_path, magic=2049)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimension sizes, then unsigned bytes."""
    try:
        with gzip.open(path) as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error}); reinstall dataset-fashion-mnist") from error
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], 'big') != magic:
        raise ValueError(f"{path} is not an IDX file of {ndim} dimensions (bad magic number)")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST from the Debian package's IDX files, as grayscale PIL images (10 classes)."""

    classes = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
               'Ankle boot')

    def __init__(self, split: str, transform: Optional[Callable] = None, root: Path = FASHION_MNIST_ROOT):
        self.images, self.targets = read_fashion_mnist(split, root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy(), mode='L')
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class SkipUnreadable(Dataset):
    """Yields None for a sample whose file cannot be decoded, so one bad image never ends an epoch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (OSError, SyntaxError, ValueError):  # PIL's UnidentifiedImageError is an OSError
            return None


def collate_readable(batch: list) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """(images, targets, number of unreadable samples dropped); images and targets are None if all were."""
    readable = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(readable)
    if not readable:
        return None, None, skipped
    images, targets = default_collate(readable)
    return images, targets, skipped


def image_folder(root: Path, transform: Callable, in_chans: int) -> ImageFolder:
    """``root/<class>/<image>``. A missing folder, no classes, or a file that is not an image is an error now; an
    image whose data turns out corrupt while decoding is skipped during training (``SkipUnreadable``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected {root}/<class name>/<images>")
    mode = 'L' if in_chans == 1 else 'RGB'
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=partial(_load_image, mode=mode))
    except FileNotFoundError as error:  # torchvision's words for "no class folders" or "no images"
        raise ValueError(f"image folder {root} has no usable classes: {error}. Expected {root}/<class>/<image files>")
    unreadable = [path for path, _ in dataset.samples if not _has_image_header(path)]
    if unreadable:
        raise ValueError(f"{len(unreadable)} file(s) under {root} are not readable images, e.g. "
                         f"{', '.join(unreadable[:3])}; fix or remove them before training")
    return dataset


def _load_image(path: str, mode: str) -> Image.Image:
    with open(path, 'rb') as f:
        image = Image.open(f)
        image.load()
        return to_mode(image, mode)  # as the server converts: 16-bit and float images scaled, not clipped


def _has_image_header(path: str) -> bool:
    """Whether PIL recognises the file (reads the header only: fast enough for ImageNet's 1.3 M files)."""
    try:
        with Image.open(path):
            return True
    except (OSError, SyntaxError, ValueError):
        return False


def build_transform(data_config: dict, train: bool, auto_augment: Optional[str] = None, re_prob: float = 0.,
                    scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5) -> Callable:
    """timm's ImageNet transforms (random resized crop, flip, RandAugment, random erasing) at the model's input size,
    mean and std; evaluation: resize and centre crop."""
    return create_transform(
        data_config['input_size'], is_training=train, scale=scale, hflip=hflip, auto_augment=auto_augment,
        re_prob=re_prob, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], crop_pct=data_config['crop_pct'])


def fashion_mnist_root(data: str) -> Optional[Path]:
    """The folder of Fashion-MNIST's four files that ``data`` names: 'fashion-mnist' for the Debian package's, or a
    folder holding them; None for anything else (an image folder)."""
    if data == 'fashion-mnist':
        return FASHION_MNIST_ROOT
    return Path(data) if (Path(data) / 'train-images-idx3-ubyte.gz').is_file() else None


def build_datasets(data: str, train_transform: Callable, eval_transform: Callable,
                   in_chans: int) -> tuple[Dataset, Dataset, list[str]]:
    """Training set, evaluation set and class names of Fashion-MNIST (see ``fashion_mnist_root``) or an image folder
    with train/ and val/."""
    eval_set, classes = build_eval_dataset(data, eval_transform, in_chans)
    root = fashion_mnist_root(data)
    if root is not None:
        return FashionMNIST('train', train_transform, root), eval_set, classes
    train_set = image_folder(Path(data) / 'train', train_transform, in_chans)
    if train_set.classes != classes:
        raise ValueError(f"{data}/train and {data}/val have different classes: "
                         f"{sorted(set(train_set.classes) ^ set(classes))[:5]} are in only one of them")
    return train_set, eval_set, classes


def build_eval_dataset(data: str, transform: Callable, in_chans: int) -> tuple[Dataset, list[str]]:
    """The evaluation set (Fashion-MNIST's test split, or an image folder's val/) and its class names."""
    root = fashion_mnist_root(data)
    if root is not None:
        return FashionMNIST('test', transform, root), list(FashionMNIST.classes)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {data}: no such folder; give 'fashion-mnist', a folder of Fashion-MNIST's four *-ubyte.gz "
            "files, or an image folder with train/<class>/ and val/<class>/")
    eval_set = image_folder(root / 'val', transform, in_chans)
    return eval_set, eval_set.classes
