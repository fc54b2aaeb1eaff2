import gzip
import shutil
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from scalavit.data import (FashionMNIST, SkipUnreadable, build_datasets, collate_readable, describe,
                           read_fashion_mnist)


def write_idx(path, magic, shape, payload):
    header = magic.to_bytes(4, 'big') + b''.join(n.to_bytes(4, 'big') for n in shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + payload)


@pytest.fixture
def fake_fashion(tmp_path):
    images = torch.arange(3 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8)
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', 2051, (3, 28, 28), images.numpy().tobytes())
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', 2049, (3,), bytes([4, 0, 9]))
    return tmp_path, images.reshape(3, 28, 28)


def test_idx_files_are_read_back_exactly(fake_fashion):
    root, images = fake_fashion
    x, y = read_fashion_mnist('train', root)
    assert torch.equal(x, images) and y.tolist() == [4, 0, 9] and y.dtype == torch.int64
    dataset = FashionMNIST('train', root=root)
    image, label = dataset[2]
    assert image.mode == 'L' and image.size == (28, 28) and label == 9


def test_a_folder_of_the_four_files_is_fashion_mnist_as_data(fake_fashion):
    """--data FOLDER reads Fashion-MNIST from there (a copy where the Debian package cannot be installed)."""
    root, images = fake_fashion
    write_idx(root / 't10k-images-idx3-ubyte.gz', 2051, (1, 28, 28), b'\7' * 28 * 28)
    write_idx(root / 't10k-labels-idx1-ubyte.gz', 2049, (1,), bytes([2]))
    train_set, eval_set, classes = build_datasets(str(root), lambda image: image, lambda image: image, in_chans=1)
    assert len(train_set) == 3 and len(eval_set) == 1 and classes == list(FashionMNIST.classes)
    assert eval_set[0][1] == 2 and eval_set[0][0].getpixel((5, 5)) == 7 and train_set[1][1] == 0


def test_missing_dataset_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
        read_fashion_mnist('test', tmp_path)


def test_truncated_or_foreign_files_are_refused(fake_fashion):
    root, _ = fake_fashion
    write_idx(root / 'train-images-idx3-ubyte.gz', 2051, (3, 28, 28), b'\0' * 100)
    with pytest.raises(ValueError, match='truncated'):
        read_fashion_mnist('train', root)
    (root / 'train-images-idx3-ubyte.gz').write_bytes(b'not gzip')
    with pytest.raises(ValueError, match='not a readable gzip file'):
        read_fashion_mnist('train', root)


def test_collate_drops_unreadable_samples_and_counts_them():
    batch = [(torch.zeros(1, 2, 2), 1), None, (torch.ones(1, 2, 2), 0)]
    images, targets, skipped = collate_readable(batch)
    assert images.shape == (2, 1, 2, 2) and targets.tolist() == [1, 0] and skipped == 1
    assert collate_readable([None, None]) == (None, None, 2)


def same(image):
    return image


def png_header_only(path, width, height):
    """A PNG that claims ``width`` x ``height`` pixels: what Pillow's decompression-bomb check reads."""
    def chunk(kind, data):
        return len(data).to_bytes(4, 'big') + kind + data + zlib.crc32(kind + data).to_bytes(4, 'big')
    header = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    for split in ('train', 'val'):
        (root / split / '.ipynb_checkpoints').mkdir()
        shutil.copy(root / split / 'class0' / '0.png', root / split / '.ipynb_checkpoints' / '0.png')
        shutil.copy(root / split / 'class0' / '0.png', root / split / 'class0' / '.0-checkpoint.png')
        (root / split / 'class1' / '.DS_Store').mkdir()
    train_set, eval_set, classes = build_datasets(str(root), same, same, in_chans=1)
    assert classes == ['class0', 'class1', 'class2']
    assert len(train_set) == 24 and len(eval_set) == 12


def test_links_are_followed_but_each_image_counts_once(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    (root / 'train' / 'class1' / 'loop').symlink_to('.')  # a link loop: the class's 8 images again and again
    (root / 'train' / 'class2' / 'again.png').symlink_to(root / 'train' / 'class2' / '0.png')
    (root / 'train' / 'class2' / 'linked').symlink_to(tmp_path / 'more')  # a linked folder of new images
    (tmp_path / 'more').mkdir()
    shutil.copy(root / 'val' / 'class2' / '0.png', tmp_path / 'more' / 'extra.png')
    train_set, _, _ = build_datasets(str(root), same, same, in_chans=1)
    counts = Counter(target for _, target in train_set.samples)
    assert counts == {0: 8, 1: 8, 2: 9}
    assert train_set.duplicates == 9  # 8 through the loop, 1 second link
    assert describe('training', train_set) == 'training: 25 images (9 duplicate path(s) to the same files dropped)'


def test_a_class_in_one_split_only_is_named(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    shutil.copytree(root / 'train' / 'class2', root / 'train' / 'sandal')
    with pytest.raises(ValueError, match=r"must hold the same class folders: 'sandal' only in .*train"):
        build_datasets(str(root), same, same, in_chans=1)


def test_a_decompression_bomb_in_a_folder_is_skipped_as_unreadable(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    png_header_only(root / 'train' / 'class0' / 'bomb.png', 30000, 30000)  # 900 M pixels: over twice the limit
    png_header_only(root / 'train' / 'class1' / 'big.png', 10000, 10000)  # 100 M: over the limit, under twice
    train_set, _, _ = build_datasets(str(root), same, same, in_chans=1)
    readable = SkipUnreadable(train_set)
    dropped = [path for i, (path, _) in enumerate(train_set.samples) if readable[i] is None]
    assert sorted(Path(path).name for path in dropped) == ['big.png', 'bomb.png']
