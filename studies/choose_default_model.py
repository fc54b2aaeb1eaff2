"""How big should the built-in default model be? Candidates trained for the same wall-clock time on Fashion-MNIST.

Each candidate (patch size, width, heads, depth) trains at full width from the same seed for ``--seconds`` with AdamW
(lr 1e-3, weight decay 0.05, batch 128, no augmentation), then reports its Fashion-MNIST test accuracy. A Scala step
costs about twice a full-width step, so the best model for a few minutes of Scala training on this CPU is the one that
learns most per second here.

    python studies/choose_default_model.py --seconds 150
"""
import argparse
import time

import torch
import torch.nn.functional as F

from scalavit import SlimmableVisionTransformer
from scalavit.data import read_fashion_mnist
from scalavit.evaluate import count_macs
from scalavit.model import FASHION_MNIST_MEAN, FASHION_MNIST_STD

CANDIDATES = ['7,96,3,6', '7,96,3,4', '7,96,3,9', '7,144,3,6', '7,192,3,6', '4,96,3,6', '4,64,2,6']


def normalise(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]).unsqueeze(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=150, help='training time per candidate')
    parser.add_argument('--candidates', nargs='+', default=CANDIDATES, help='patch,embed_dim,heads,depth')
    args = parser.parse_args()

    train_x, train_y = read_fashion_mnist('train')
    test_x, test_y = read_fashion_mnist('test')
    test_x = normalise(test_x)
    print(f"{args.seconds:.0f} s of full-width training each, batch 128, {torch.get_num_threads()} threads")
    print(f"{'patch,dim,heads,depth':>22} {'params':>10} {'MACs/img':>12} {'train img/s':>12} {'steps':>6} {'test acc':>9}")
    for candidate in args.candidates:
        patch, dim, heads, depth = map(int, candidate.split(','))
        torch.manual_seed(0)
        model = SlimmableVisionTransformer(img_size=28, patch_size=patch, in_chans=1, num_classes=10,
                                           embed_dim=dim, depth=depth, num_heads=heads)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        model.train()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            batch = torch.randint(0, len(train_x), (128,))
            loss = F.cross_entropy(model(normalise(train_x[batch])), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        elapsed = time.perf_counter() - start
        model.eval()
        with torch.inference_mode():
            predictions = torch.cat([model(test_x[i:i + 1000]).argmax(1) for i in range(0, len(test_x), 1000)])
        accuracy = (predictions == test_y).float().mean().item()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, 1.0, (1, 28, 28))
        print(f"{candidate:>22} {params:>10,d} {macs:>12,d} {steps * 128 / elapsed:>12.0f} {steps:>6d} "
              f"{100 * accuracy:>8.2f}%", flush=True)


if __name__ == '__main__':
    main()
