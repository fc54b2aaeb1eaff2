"""``scalavit <command>``: the command-line interface."""
import argparse
import sys

import timm
import torch

from . import model as _registered_models  # noqa: F401  (registers the scala_* models with timm)
from .evaluate import count_macs, count_params, median_ms, time_call
from .model import FASHION_MODEL


def _widths(args: argparse.Namespace) -> None:
    """Print every width of a (randomly initialised) model: channels, parameters, MACs and batch-1 latency."""
    torch.manual_seed(0)
    model = timm.create_model(args.model, smallest=args.smallest, largest=args.largest,
                              granularity=args.granularity).eval()
    input_size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *input_size)
    print(f"{args.model}: grid {list(model.widths)}, {torch.get_num_threads()} threads, batch 1, fp32")
    print(f"{'width':>7} {'channels':>9} {'side':>5} {'params':>11} {'MACs':>13} {'latency ms':>11}")
    with torch.inference_mode():
        for width in model.widths:
            channels = model.channels(width)
            side = 'last' if channels.embed.start is not None and channels.embed.start < 0 else 'first'
            latency = median_ms(time_call(lambda: model(x, width), repeats=args.repeats))
            print(f"{width:>7.4f} {channels.dim:>9d} {side:>5} {count_params(model, width):>11,d} "
                  f"{count_macs(model, width, input_size):>13,d} {latency:>11.2f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='scalavit', description='Train one slimmable Vision Transformer (Scala) and serve any of its widths.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    widths = commands.add_parser('widths', help="show a model's width grid: channels, parameters, MACs, latency")
    widths.add_argument('--model', default=FASHION_MODEL, help=f'a scala_* model name (default {FASHION_MODEL})')
    widths.add_argument('--smallest', type=float, default=0.25)
    widths.add_argument('--largest', type=float, default=1.0)
    widths.add_argument('--granularity', type=float, default=1 / 16)
    widths.add_argument('--repeats', type=int, default=20, help='timed batch-1 calls per width')
    widths.set_defaults(run=_widths)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        print(f"scalavit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
