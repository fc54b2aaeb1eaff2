"""What the main job's training loader delivers alone, and where its time goes.

The loader of ``scalavit train`` (the defaults: Fashion-MNIST, batch 128, timm's training transforms) is iterated
with no model step, for each ``--workers`` count: images per second over ``--batches`` batches after the first.
Then each transform of the pipeline is timed alone on one image, in this process: the cost of one image, part by part.
A training step faster than the loader's rate waits for it.

    python benchmarks/loader_speed.py
    python benchmarks/loader_speed.py --workers 1 2 4 --batches 200
"""
import argparse
import itertools
import tempfile
import time

from scalavit.config import TrainConfig
from scalavit.data import FashionMNIST
from scalavit.train import Trainer


def images_per_second(loader, batches: int) -> float:
    """The rate over up to ``batches`` batches, after the first (which waits for the workers to start)."""
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for batch, _, _ in itertools.islice(iterator, batches):
        images += len(batch)
    return images / (time.perf_counter() - start)


def transform_costs(transform, image, calls: int = 2000) -> list[tuple[str, float]]:
    """Microseconds per call of each step of a torchvision ``Compose``, fed what the step before it gives."""
    costs = []
    for step in transform.transforms:
        start = time.perf_counter()
        for _ in range(calls):
            output = step(image)
        costs.append((type(step).__name__, 1e6 * (time.perf_counter() - start) / calls))
        image = output
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batches', type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            trainer = Trainer(TrainConfig(output=f'{tmp}/run-{workers}', workers=workers, device='cpu'))
            rate = images_per_second(trainer.train_loader, args.batches)
            print(f"--workers {workers}: {rate:,.0f} images/s over {args.batches} batches of "
                  f"{trainer.config.batch_size}", flush=True)
    dataset = trainer.train_loader.dataset.dataset
    image = FashionMNIST('train')[0][0]
    costs = transform_costs(dataset.transform, image)
    print(f"\none image through the training transforms, in this process: {sum(c for _, c in costs):.0f} us")
    for name, microseconds in costs:
        print(f"  {name:40} {microseconds:7.1f} us")


if __name__ == '__main__':
    main()
