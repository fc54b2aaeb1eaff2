"""The paper's comparison (SPEC section 6) in miniature, on Fashion-MNIST, with one epoch budget for every run.

Trains Separate Training at 0.25, 0.5, 0.75 and 1.0; US-Net; Scala; and Scala without each of Isolated Activation,
Progressive Knowledge Transfer, Stable Sampling and Noise Calibration. The separate 1.0 model is Scala's teacher (the
Scala runs use the distilled variant of the model, as the paper's DeiTs do). Every run is evaluated at every width and
the tables, in the form of SPEC section 6, go to docs/RESULTS.md with a plot.

    python benchmarks/paper_table.py               # the whole study (writes docs/RESULTS.md)
    python benchmarks/paper_table.py --quick       # the same pipeline on a few steps per run, for CI
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from scalavit.evaluate import evaluate
from scalavit.report import plot, write_report
from scalavit.train import TrainConfig, train

MODEL = 'scala_vit_mini_patch7_28'
DISTILLED_MODEL = 'scala_vit_mini_distilled_patch7_28'
SEPARATE_WIDTHS = (0.25, 0.5, 0.75, 1.0)
TABLE_WIDTHS = (0.25, 0.5, 0.75, 1.0)
ABLATION_WIDTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
ABLATIONS = {  # name: the options that differ from Scala
    'Scala': {},
    'w/o IA': dict(isolated_activation=False),
    'w/o PKT': dict(transfer='full'),
    'w/o SS': dict(sampling='uniform'),
    'w/o NC': dict(noise_calibration=False),
}


def run_dir(root: Path, name: str) -> Path:
    return root / name.replace('/', '').replace(' ', '_').replace('.', '')


def train_once(root: Path, name: str, common: dict, **options) -> Path:
    """Train, or continue an interrupted run, or skip a finished one: the study can be restarted after a stop."""
    output = run_dir(root, name)
    config = TrainConfig(output=str(output), **common, **options)
    resume = None
    if (output / 'last.pt').exists():
        checkpoint = torch.load(output / 'last.pt', weights_only=False)
        if checkpoint['epoch'] >= config.epochs or checkpoint['step'] >= (config.max_steps or float('inf')):
            print(f"[{name}] already trained in {output}")
            return output
        resume = str(output)
    start = time.perf_counter()
    train(config, resume=resume)
    print(f"[{name}] trained in {time.perf_counter() - start:.0f} s", flush=True)
    return output


def evaluate_into(paths: list[Path], output: Path, name: str, latency_repeats: int) -> list[dict]:
    report = evaluate([str(p) for p in paths], workers=1, latency_repeats=latency_repeats)
    write_report(report, output, name)
    return report['rows']


def top1_at(rows: list[dict], widths) -> list[str]:
    by_width = {round(r['width'], 6): r['top1'] for r in rows}
    return [f"{by_width[round(w, 6)]:.1f}" if round(w, 6) in by_width else '–' for w in widths]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=5, help='the epoch budget of every run')
    parser.add_argument('--quick', action='store_true', help='3 steps a run and a report elsewhere: checks the pipeline')
    parser.add_argument('--output', type=Path, default=Path('runs/paper_table'))
    parser.add_argument('--doc', type=Path, default=Path('docs/RESULTS.md'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.quick:  # never mixes with, or overwrites, the real study
        args.output = args.output.with_name(args.output.name + '_quick')
        args.doc = args.output / 'RESULTS.md'
    # --quick skips the full-width warm-up so that its few steps exercise every sub-network.
    common = dict(epochs=args.epochs, seed=args.seed, full_warmup_epochs=0 if args.quick else 1,
                  max_steps=3 if args.quick else None, workers=1)
    latency_repeats = 3 if args.quick else 30
    start = time.perf_counter()

    separate = [train_once(args.output, f'ST {w}', common, method='separate', width=w) for w in SEPARATE_WIDTHS]
    teacher = separate[-1] / 'last.pt'
    results = {'Separate Training': evaluate_into(separate, run_dir(args.output, 'ST family'), 'Separate Training',
                                                  latency_repeats)}
    usnet = train_once(args.output, 'US-Net', common, method='usnet')
    results['US-Net'] = evaluate_into([usnet], usnet, 'US-Net', latency_repeats)
    for name, options in ABLATIONS.items():
        path = train_once(args.output, name, common, method='scala', model=DISTILLED_MODEL, teacher=str(teacher),
                          **options)
        results[name] = evaluate_into([path], path, name, latency_repeats)
    hours = (time.perf_counter() - start) / 3600

    args.doc.parent.mkdir(parents=True, exist_ok=True)
    figure = args.doc.parent / 'results_accuracy_vs_macs.png'
    plot({name: results[name] for name in ('Separate Training', 'US-Net', 'Scala')}, 'macs', figure,
         'Fashion-MNIST, same epoch budget')
    command = 'python benchmarks/paper_table.py' + (' --quick' if args.quick else '') + (
        f' --epochs {args.epochs}' if args.epochs != 5 else '')
    params = {name: results[name][-1]['params'] for name in ('US-Net', 'Scala')}
    params['Separate Training'] = sum(r['params'] for r in results['Separate Training'])  # a model per width
    main_rows = [[name, f"{params[name]:,}"] + top1_at(results[name], TABLE_WIDTHS)
                 for name in ('US-Net', 'Separate Training', 'Scala')]
    ablation_rows = [[name] + top1_at(results[name], ABLATION_WIDTHS) for name in ABLATIONS]
    macs = {round(r['width'], 6): r['macs'] for r in results['Scala']}
    text = f"""# Scala against its baselines and ablations, in miniature

`{command}`: {args.epochs} epochs for every run ({'3 steps a run: a pipeline check, not a result' if args.quick else
'the whole Fashion-MNIST training set each epoch'}), seed {args.seed}, on {platform.machine()} with
{torch.get_num_threads()} threads (torch {torch.__version__}); {hours:.2f} hours in all.

Model: `{MODEL}` (patch 7, width 96, 3 heads, depth 4) for Separate Training and US-Net; its distilled variant
`{DISTILLED_MODEL}` for Scala and its ablations, taught by the Separate Training model of width 1.0 (DeiT hard
distillation). Grid 0.25 to 1.0 by 1/16 (13 widths); full-width warm-up {common['full_warmup_epochs']} epoch(s);
the training recipe is `scalavit train`'s default for the built-in data. Test top-1 (%) on the 10,000 test images.

MACs per image at widths {', '.join(f'{w:g}' for w in TABLE_WIDTHS)}: {' / '.join(f'{macs[w] / 1e6:.2f} M' for w in TABLE_WIDTHS)}.

{markdown_table(['method', 'params'] + [f'r={w:g}' for w in TABLE_WIDTHS], main_rows)}

Ablations (widths 0.25 to 1.0 by 0.125):

{markdown_table(['variant'] + [f'{w:g}' for w in ABLATION_WIDTHS], ablation_rows)}

![top-1 against MACs]({figure.name})
"""
    args.doc.write_text(text)
    print(text)


if __name__ == '__main__':
    sys.exit(main())
