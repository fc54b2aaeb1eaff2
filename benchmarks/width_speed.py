"""Speed of every width against a dense timm ViT of the same width, measured side by side in one run.

For each width the slimmable model runs ``model(x, width)`` and the dense model is the timm ``VisionTransformer`` that
holds exactly that width's weights (``scalavit.to_timm``); at width 1.0 that is timm's own DeiT. Calls alternate
between the two (ABAB...) so that drift of a noisy machine hits both alike; each figure is a median.

    python benchmarks/width_speed.py                      # DeiT-S, batch 1 and 16, inference at every width
    python benchmarks/width_speed.py --model scala_vit_mini_patch7_28 --batch-sizes 1 256
"""
import argparse

import timm
import torch
import torch.nn.functional as F

import scalavit  # noqa: F401  (registers the scala_* models)
from scalavit import to_timm
from scalavit.evaluate import time_alternately


def calls_for(seconds_per_call: float, budget: float) -> int:
    return max(5, min(50, int(budget / max(seconds_per_call, 1e-4))))


def inference_rows(model, widths, batch_size, budget):
    x = torch.randn(batch_size, *model.pretrained_cfg['input_size'])
    for width in widths:
        dense = to_timm(model, width).eval()
        with torch.inference_mode():
            probe, _ = time_alternately(lambda: model(x, width), lambda: dense(x), calls=1, warmup=1)
            ours, theirs = time_alternately(lambda: model(x, width), lambda: dense(x), calls_for(probe, budget))
        yield width, ours, theirs


def training_rows(model, widths, batch_size, budget):
    x = torch.randn(batch_size, *model.pretrained_cfg['input_size'])
    y = torch.randint(0, model.num_classes, (batch_size,))

    def step(net, *width):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, *width), y).backward()

    model.train()
    for width in widths:
        dense = to_timm(model, width).train()
        probe, _ = time_alternately(lambda: step(model, width), lambda: step(dense), calls=1, warmup=1)
        ours, theirs = time_alternately(lambda: step(model, width), lambda: step(dense), calls_for(probe, budget))
        yield width, ours, theirs
    model.eval()


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'width':>7} {'scalavit ms':>12} {'dense timm ms':>14} {'ratio':>7}")
    ratios = []
    for width, ours, theirs in rows:
        ratios.append((ours / theirs, width))
        print(f"{width:>7.4f} {1e3 * ours:>12.2f} {1e3 * theirs:>14.2f} {ours / theirs:>7.3f}", flush=True)
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='scala_deit_small_patch16_224')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 16])
    parser.add_argument('--train-batch-size', type=int, default=16)
    parser.add_argument('--train-widths', type=float, nargs='*', default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument('--budget', type=float, default=4.0, help='seconds of timed calls per figure and model')
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    print(f"{args.model}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}")
    worst = {}
    for batch_size in args.batch_sizes:
        rows = inference_rows(model, model.widths, batch_size, args.budget)
        worst[f'inference, batch {batch_size}'] = max(print_table(f"inference, batch {batch_size}", rows))
    if args.train_widths:
        rows = training_rows(model, args.train_widths, args.train_batch_size, args.budget)
        title = f"training step (forward + backward), batch {args.train_batch_size}"
        worst[title] = max(print_table(title, rows))
    print("\nworst ratio (scalavit / dense timm)")
    for title, (ratio, width) in worst.items():
        print(f"  {title}: {ratio:.3f} at width {width}")


if __name__ == '__main__':
    main()
