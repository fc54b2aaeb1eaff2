"""Each width at each precision on this machine's CPU: the time of a batch against fp32's, measured in one run.

For every width of a slimmable model (a trained run, or a DeiT with random weights: speed does not depend on them),
the width is taken out as a plain timm model and timed at batch ``--batch`` in fp32, in bf16 (CPU autocast) and in
int8 (torchao, dynamic activations, int8 weights), in rotation, ``--repeats`` times; printed is fp32's time over each
precision's (above 1: faster than fp32), the median and the range over repeats, beside the processor's bf16 and int8
units.

    python benchmarks/precision_speed.py --run runs/serve-tiny56 --model scala_deit_small_patch16_224 \
        --deit-widths 0.25 0.5 0.75 1.0 --repeats 3 --output docs/precision_speed.md
"""
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

import scalavit  # noqa: F401  (registers the scala_* models)
from scalavit.checkpoint import load_model
from scalavit.export import to_timm
from scalavit.precision import PRECISIONS, at_precision, cpu_flags, fast_units


def seconds_per_batch(forward, x: torch.Tensor, calls: int) -> float:
    """The median of ``calls`` timed calls, after two untimed ones."""
    with torch.inference_mode():
        for _ in range(2):
            forward(x)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_ups(model, widths: list[float], batch: int, calls: int, repeats: int) -> dict[float, dict[str, list[float]]]:
    """width -> precision -> fp32's time over the precision's, once per repeat."""
    x = torch.randn(batch, model.in_chans, *model.patch_embed.img_size)
    ratios = {w: {p: [] for p in PRECISIONS} for w in widths}
    forwards = {}
    for width in widths:
        dense = to_timm(model, width).eval()
        forwards[width] = {p: at_precision(dense, p) for p in PRECISIONS}
    for repeat in range(repeats):
        for width in widths:
            order = PRECISIONS[repeat % 3:] + PRECISIONS[:repeat % 3]
            times = {p: seconds_per_batch(forwards[width][p], x, calls) for p in order}
            for precision in PRECISIONS:
                ratios[width][precision].append(times['fp32'] / times[precision])
            print(f"[{repeat + 1}/{repeats}] width {width:g}: fp32 {1e3 * times['fp32']:.2f} ms; "
                  + ', '.join(f"{p} {times['fp32'] / times[p]:.2f}x" for p in PRECISIONS[1:]), flush=True)
    return ratios


def table(name: str, ratios: dict, batch: int) -> list[str]:
    def spread(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
    lines = [f'### {name}, batch {batch}', '', '| width | ' + ' | '.join(f'{p} vs fp32' for p in PRECISIONS[1:])
             + ' | best |', '|---|' + '---|' * len(PRECISIONS)]
    for width, by_precision in ratios.items():
        medians = {p: statistics.median(v) for p, v in by_precision.items()}
        best = max(medians, key=medians.get)
        lines.append(f'| {width:g} | ' + ' | '.join(spread(by_precision[p]) for p in PRECISIONS[1:])
                     + f' | {best} ({medians[best]:.2f}x) |')
    return lines + ['']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--run', help='a trained scalavit run: every width of its model')
    parser.add_argument('--model', help='a slimmable timm model with random weights, e.g. scala_deit_small_patch16_224')
    parser.add_argument('--deit-widths', type=float, nargs='+', help="--model's widths (default: all of them)")
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--calls', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, help="torch threads (default: torch's)")
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = cpu_flags()
    units = {p: fast_units(p, flags) or ['none'] for p in PRECISIONS[1:]}
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
               f"{torch.__version__}; units: bf16 {', '.join(units['bf16'])}; int8 {', '.join(units['int8'])}")
    print(machine, flush=True)
    started, lines = time.time(), []
    if args.run:
        model = load_model(args.run)[0].eval()
        lines += table(f'`{args.run}` ({model.default_cfg.get("architecture", "")})',
                       speed_ups(model, list(model.widths), args.batch, args.calls, args.repeats), args.batch)
    if args.model:
        model = timm.create_model(args.model).eval()
        widths = args.deit_widths or list(model.widths)
        lines += table(f'`{args.model}`, random weights',
                       speed_ups(model, widths, args.batch, args.calls, args.repeats), args.batch)
    print('\n'.join(lines))
    if args.output:
        command = ' '.join(['python', 'benchmarks/precision_speed.py', *sys.argv[1:]])
        args.output.write_text('\n'.join([
            '# Each width at each precision on this CPU', '', f'Command: `{command}`', '',
            f'Machine: {machine}. {args.repeats} repeats in rotated order, each the median of {args.calls} calls; '
            f'{(time.time() - started) / 60:.1f} min in all. Figures: fp32\'s time over the precision\'s (above 1: '
            'faster than fp32), median (range).', '', *lines]))


if __name__ == '__main__':
    main()
