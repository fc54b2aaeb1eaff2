import gzip

import pytest
import torch

from scalavit.data import FashionMNIST, build_datasets, collate_readable, read_fashion_mnist


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
