"""Datasets: the built-in Fashion-MNIST (Debian package ``dataset-fashion-mnist``) and image folders."""
import gzip
import os
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset, Subset, default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from .images import ImageTooLarge, to_mode

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
        except UNREADABLE:
            return None


# PIL's UnidentifiedImageError is an OSError; its DecompressionBombError (over twice Image.MAX_IMAGE_PIXELS) is not.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def collate_readable(batch: list) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """(images, targets, number of unreadable samples dropped); images and targets are None if all were."""
    readable = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(readable)
    if not readable:
        return None, None, skipped
    images, targets = default_collate(readable)
    return images, targets, skipped


class ImageFolderSet(ImageFolder):
    """torchvision's ``ImageFolder`` as its user sees the folder: names starting with a dot (``.ipynb_checkpoints``,
    ``.DS_Store``) are never classes or images, and links are followed but every file counts once, however many
    paths (a link loop, two links to one image) reach it; ``duplicates`` says how many paths were dropped."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(entry.name for entry in os.scandir(directory)
                         if entry.is_dir() and not entry.name.startswith('.'))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        samples, seen, self.duplicates = [], set(), 0
        with tqdm(desc=f'scanning {directory}', unit=' files', delay=2, leave=False) as bar:
            for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
                found = self._class_files(os.path.join(directory, name), seen, bar)
                if not found and not allow_empty:
                    raise FileNotFoundError(f"Found no valid file for the classes {name}. Supported extensions are: "
                                            f"{', '.join(IMG_EXTENSIONS)}")
                samples.extend((path, index) for path in found)
        return samples

    def _class_files(self, folder: str, seen: set[str], bar: tqdm) -> list[str]:
        found, folders_seen = [], set()
        for root, folders, files in os.walk(folder, followlinks=True):
            folders[:] = sorted(name for name in folders if not name.startswith('.'))
            images = sorted(name for name in files if not name.startswith('.')
                            and has_file_allowed_extension(name, IMG_EXTENSIONS))
            if os.path.realpath(root) in folders_seen:  # a link back to a folder already walked: a loop
                folders[:] = []
                self.duplicates += len(images)
                continue
            folders_seen.add(os.path.realpath(root))
            for name in images:
                path = os.path.join(root, name)
                real = os.path.realpath(path)
                if real in seen:
                    self.duplicates += 1
                else:
                    seen.add(real)
                    found.append(path)
            bar.update(len(images))
        return found


def image_folder(root: Path, transform: Callable, in_chans: int) -> ImageFolderSet:
    """``root/<class>/<image>``. A missing folder, no classes, or a file that is not an image is an error now; an
    image whose data turns out corrupt (or too large) while decoding is skipped and counted (``SkipUnreadable``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected {root}/<class name>/<images>")
    mode = 'L' if in_chans == 1 else 'RGB'
    try:
        dataset = ImageFolderSet(str(root), transform=transform, loader=partial(_load_image, mode=mode))
    except FileNotFoundError as error:  # torchvision's words for "no class folders" or "no images"
        raise ValueError(f"image folder {root} has no usable classes: {error}. Expected {root}/<class>/<image files>")
    paths = tqdm([path for path, _ in dataset.samples], desc=f'checking {root}', unit=' images', delay=2, leave=False)
    unreadable = [path for path in paths if not _has_image_header(path)]
    if unreadable:
        raise ValueError(f"{len(unreadable)} file(s) under {root} are not readable images, e.g. "
                         f"{', '.join(unreadable[:3])}; fix or remove them before training")
    return dataset


def _load_image(path: str, mode: str) -> Image.Image:
    with open(path, 'rb') as f:
        image = Image.open(f)
        width, height = image.size
        if width * height > Image.MAX_IMAGE_PIXELS:  # decoding it would take gigabytes: skipped as unreadable
            raise ImageTooLarge(f"{path} is {width}x{height} pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS}")
        image.load()
        return to_mode(image, mode)  # as the server converts: 16-bit and float images scaled, not clipped


def _has_image_header(path: str) -> bool:
    """Whether PIL recognises the file (reads the header only: fast enough for ImageNet's 1.3 M files). A
    decompression bomb has a valid header: it is skipped when decoded."""
    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def describe(name: str, dataset: Dataset) -> str:
    """'train: 24 images' (and, for an image folder, the duplicate paths it dropped)."""
    duplicates = getattr(dataset, 'duplicates', 0)
    dropped = f" ({duplicates} duplicate path(s) to the same files dropped)" if duplicates else ''
    return f"{name}: {len(dataset):,} images{dropped}"


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
    check_same_split_classes(Path(data), train_set.classes, classes)
    return train_set, eval_set, classes


def check_same_split_classes(root: Path, train: list[str], val: list[str]) -> None:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        where = [f"{', '.join(map(repr, names[:4]))}{' ...' if len(names) > 4 else ''} only in {root / split}"
                 for names, split in ((only_train, 'train'), (only_val, 'val')) if names]
        raise ValueError(f"{root}/train and {root}/val must hold the same class folders: {'; '.join(where)}; add "
                         "or remove class folders so that both splits agree")


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


def build_calibration_dataset(data: str, transform: Callable, in_chans: int, count: int,
                              folder: Optional[str] = None) -> Dataset:
    """Images to choose thresholds on, never the evaluation split: ``folder`` (an image folder of the same classes,
    ``FOLDER/<class>/<image>``) when given, else ``count`` images spread evenly over the training split (which the
    model has seen: thresholds chosen there are, if anything, too trusting)."""
    if folder is not None:
        return image_folder(Path(folder), transform, in_chans)
    root = fashion_mnist_root(data)
    dataset = FashionMNIST('train', transform, root) if root is not None else image_folder(
        Path(data) / 'train', transform, in_chans)
    step = max(1, len(dataset) // count)
    return Subset(dataset, range(0, len(dataset), step)[:count])
