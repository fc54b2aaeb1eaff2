"""The paper's comparison (SPEC section 6) in miniature, on Fashion-MNIST, with one epoch budget for every run.

Trains Separate Training at 0.25, 0.5, 0.75 and 1.0; US-Net; Scala; and Scala without each of Isolated Activation,
Progressive Knowledge Transfer, Stable Sampling and Noise Calibration. The separate 1.0 model is Scala's teacher (the
Scala runs use the distilled variant of the model, as the paper's DeiTs do). Every run is evaluated at every width and
the tables, in the form of SPEC section 6, go to docs/RESULTS.md with a plot and the comparison with the paper's
claims, computed from the numbers.

    python benchmarks/paper_table.py               # the whole study (writes docs/RESULTS.md)
    python benchmarks/paper_table.py --quick       # the same pipeline on a few steps per run, for CI

A stopped study continues where it stopped: finished trainings and evaluations are reused, and the time each stage
took is kept in <output>/timings.json, so the reported total is the sum of the stages however many invocations ran.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from scalavit.evaluate import cpu_name, evaluate
from scalavit.files import write_text_atomically
from scalavit.report import plot, read_report, write_report
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
# SPEC section 6: the paper's DeiT-S results on ImageNet-1K, 100 epochs, at TABLE_WIDTHS / ABLATION_WIDTHS.
PAPER = {
    'US-Net': (52.7, 60.1, 66.9, 73.2),
    'Separate Training': (45.8, 65.1, 70.7, 75.0),
    'Scala': (58.7, 68.3, 73.3, 76.1),
}
PAPER_ABLATIONS = {
    'Scala': (58.7, 63.4, 68.3, 71.3, 73.3, 74.4, 76.1),
    'w/o IA': (57.3, 61.5, 66.4, 69.8, 72.0, 73.4, 75.8),
    'w/o PKT': (53.0, 60.1, 65.6, 68.8, 71.7, 73.7, 76.2),
    'w/o SS': (58.7, 62.7, 68.1, 71.3, 73.1, 74.2, 75.9),
    'w/o NC': (50.2, 62.7, 67.2, 70.5, 72.7, 74.0, 76.3),
}
PAPER_TRAINING_HOURS = {'Separate Training': 123, 'US-Net': 20, 'Scala': 21}  # 13 widths, 8×A100


class Timings:
    """Seconds each stage of the study took, kept in a file so that a continued study adds to them."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(self.seconds, indent=2) + '\n')

    def total_hours(self) -> float:
        return sum(self.seconds.values()) / 3600

    def minutes(self, kind: str) -> float:
        """Minutes of all the stages of one kind: 'train' or 'eval'."""
        return sum(s for stage, s in self.seconds.items() if stage.startswith(kind + ' ')) / 60


def run_dir(root: Path, name: str) -> Path:
    return root / name.replace('/', '').replace(' ', '_').replace('.', '')


def train_once(root: Path, timings: Timings, name: str, common: dict, **options) -> Path:
    """Train, or continue an interrupted run, or skip a finished one."""
    output = run_dir(root, name)
    config = TrainConfig(output=str(output), **common, **options)
    resume = None
    if (output / 'last.pt').exists():
        checkpoint = torch.load(output / 'last.pt', weights_only=False)
        if checkpoint['epoch'] >= config.epochs or checkpoint['step'] >= (config.max_steps or float('inf')):
            print(f"[{name}] already trained in {output}")
            return output
        resume = str(output)
    elif output.is_dir() and any(output.iterdir()):
        resume = str(output)  # stopped before its first checkpoint: starts again in its own directory
    start = time.perf_counter()
    train(config, resume=resume)
    earlier = timings.seconds.get(f'train {name}', 0) if resume else 0  # a run continued with a larger budget
    seconds = earlier + time.perf_counter() - start
    timings.record(f'train {name}', seconds)
    print(f"[{name}] trained in {seconds:.0f} s", flush=True)
    return output


def evaluate_once(paths: list[Path], output: Path, timings: Timings, name: str, latency_repeats: int) -> list[dict]:
    """Every width of the run, or the report already written for these checkpoints."""
    report_file = output / 'results.json'
    if f'eval {name}' in timings.seconds and report_file.is_file() and all(
            report_file.stat().st_mtime > (p / 'last.pt').stat().st_mtime for p in paths):
        print(f"[{name}] already evaluated in {output}")
        return read_report(output)['rows']
    start = time.perf_counter()
    report = evaluate([str(p) for p in paths], workers=1, latency_repeats=latency_repeats)
    write_report(report, output, name)
    timings.record(f'eval {name}', time.perf_counter() - start)
    return report['rows']


def top1(rows: list[dict], widths) -> list[float]:
    by_width = {round(r['width'], 6): r['top1'] for r in rows}
    return [by_width[round(w, 6)] for w in widths]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def signed(values) -> list[str]:
    return [f'{v:+.1f}' for v in values]


def differences(a, b) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def ablation_drops(accuracies: dict[str, tuple]) -> dict[str, tuple[float, float]]:
    """(mean drop over the widths, drop at the smallest width) of every variant against Scala."""
    scala = accuracies['Scala']
    return {name: (statistics.mean(differences(scala, acc)), scala[0] - acc[0])
            for name, acc in accuracies.items() if name != 'Scala'}


def comparison(results: dict[str, list[dict]], train_minutes: dict[str, float]) -> str:
    """Where our numbers agree with the paper's claims and where they do not, measured against SPEC section 6."""
    ours = {name: top1(results[name], TABLE_WIDTHS) for name in PAPER}
    vs_st, vs_usnet = (differences(ours['Scala'], ours[other]) for other in ('Separate Training', 'US-Net'))
    paper_vs_st, paper_vs_usnet = (differences(PAPER['Scala'], PAPER[other]) for other in ('Separate Training',
                                                                                          'US-Net'))
    widths = [f'r={w:g}' for w in TABLE_WIDTHS]
    claims = markdown_table(['Scala minus', 'where'] + widths, [
        ['Separate Training', 'ours'] + signed(vs_st), ['Separate Training', 'paper'] + signed(paper_vs_st),
        ['US-Net', 'ours'] + signed(vs_usnet), ['US-Net', 'paper'] + signed(paper_vs_usnet)])

    drops = ablation_drops({name: top1(results[name], ABLATION_WIDTHS) for name in ABLATIONS})
    paper_drops = ablation_drops(PAPER_ABLATIONS)
    rank = {name: i + 1 for i, name in enumerate(sorted(drops, key=lambda n: -drops[n][0]))}
    paper_rank = {name: i + 1 for i, name in enumerate(sorted(paper_drops, key=lambda n: -paper_drops[n][0]))}
    ablations = markdown_table(
        ['variant', 'mean drop, ours', 'mean drop, paper', 'rank, ours', 'rank, paper', 'drop at 0.25, ours',
         'drop at 0.25, paper'],
        [[name, f'{drops[name][0]:+.2f}', f'{paper_drops[name][0]:+.2f}', str(rank[name]), str(paper_rank[name]),
          f'{drops[name][1]:+.1f}', f'{paper_drops[name][1]:+.1f}'] for name in drops])
    cost = markdown_table(['method', 'training, ours (min)', 'ratio to Scala', 'paper (h, 8×A100)', 'ratio to Scala'],
                          [[name, f'{train_minutes[name]:.1f}', f'{train_minutes[name] / train_minutes["Scala"]:.2f}',
                            str(PAPER_TRAINING_HOURS[name]),
                            f'{PAPER_TRAINING_HOURS[name] / PAPER_TRAINING_HOURS["Scala"]:.2f}']
                           for name in PAPER_TRAINING_HOURS])

    def verdict(holds: bool) -> str:
        return 'holds here' if holds else 'does not hold here'

    small = TABLE_WIDTHS.index(0.25)
    return f"""## Against the paper's claims

Top-1 differences in points (Scala minus the baseline), ours against the paper's (SPEC section 6):

{claims}

- Scala at or above Separate Training at the small widths: {verdict(vs_st[small] >= 0)}
  (r=0.25: {vs_st[small]:+.1f} here, {paper_vs_st[small]:+.1f} in the paper).
- Scala above US-Net: {verdict(min(vs_usnet) > 0)}
  ({min(vs_usnet):+.1f} to {max(vs_usnet):+.1f} here, {min(paper_vs_usnet):+.1f} to {max(paper_vs_usnet):+.1f} in the paper).

Ablations: how far each variant falls below Scala (points, positive = worse than Scala), mean over the widths 0.25 to
1.0 by 0.125, and at the smallest width; rank 1 is the component whose removal costs most:

{ablations}

- The order of the ablations: {verdict([rank[n] for n in drops] == [paper_rank[n] for n in drops])}
  (ours, most costly first: {', '.join(sorted(drops, key=rank.get))};
  the paper: {', '.join(sorted(paper_drops, key=paper_rank.get))}).

Training cost of the methods (all 13 widths for US-Net and Scala; the four separate models for Separate Training,
which the paper's 123 h counts at 13 widths):

{cost}
"""


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
    timings = Timings(args.output / 'timings.json')

    separate = [train_once(args.output, timings, f'ST {w}', common, method='separate', width=w)
                for w in SEPARATE_WIDTHS]
    teacher = separate[-1] / 'last.pt'
    results = {'Separate Training': evaluate_once(separate, run_dir(args.output, 'ST family'), timings,
                                                  'Separate Training', latency_repeats)}
    usnet = train_once(args.output, timings, 'US-Net', common, method='usnet')
    results['US-Net'] = evaluate_once([usnet], usnet, timings, 'US-Net', latency_repeats)
    for name, options in ABLATIONS.items():
        path = train_once(args.output, timings, name, common, method='scala', model=DISTILLED_MODEL,
                          teacher=str(teacher), **options)
        results[name] = evaluate_once([path], path, timings, name, latency_repeats)
    train_minutes = {'Separate Training': sum(timings.seconds[f'train ST {w}'] for w in SEPARATE_WIDTHS) / 60,
                     'US-Net': timings.seconds['train US-Net'] / 60, 'Scala': timings.seconds['train Scala'] / 60}

    args.doc.parent.mkdir(parents=True, exist_ok=True)
    figure = args.doc.parent / 'results_accuracy_vs_macs.png'
    plot({name: results[name] for name in ('Separate Training', 'US-Net', 'Scala')}, 'macs', figure,
         'Fashion-MNIST, same epoch budget')
    command = 'python benchmarks/paper_table.py' + (' --quick' if args.quick else '') + (
        f' --epochs {args.epochs}' if args.epochs != 5 else '')
    params = {name: results[name][-1]['params'] for name in ('US-Net', 'Scala')}
    params['Separate Training'] = sum(r['params'] for r in results['Separate Training'])  # a model per width
    main_rows = [[name, f"{params[name]:,}"] + [f'{a:.1f}' for a in top1(results[name], TABLE_WIDTHS)]
                 for name in ('US-Net', 'Separate Training', 'Scala')]
    ablation_rows = [[name] + [f'{a:.1f}' for a in top1(results[name], ABLATION_WIDTHS)] for name in ABLATIONS]
    macs = {round(r['width'], 6): r['macs'] for r in results['Scala']}
    text = f"""# Scala against its baselines and ablations, in miniature

`{command}`: {args.epochs} epochs for every run ({'3 steps a run: a pipeline check, not a result' if args.quick else
'the whole Fashion-MNIST training set each epoch'}), seed {args.seed}, on {cpu_name()} with
{torch.get_num_threads()} threads (torch {torch.__version__}); {timings.total_hours():.2f} hours in all:
{timings.minutes('train'):.1f} minutes of training and {timings.minutes('eval'):.1f} of evaluation (every stage's time
is in `{args.output / 'timings.json'}`).

Model: `{MODEL}` (patch 7, width 96, 3 heads, depth 4) for Separate Training and US-Net; its distilled variant
`{DISTILLED_MODEL}` for Scala and its ablations, taught by the Separate Training model of width 1.0 (DeiT hard
distillation). Grid 0.25 to 1.0 by 1/16 (13 widths); full-width warm-up {common['full_warmup_epochs']} epoch(s);
the training recipe is `scalavit train`'s default for the built-in data. Test top-1 (%) on the 10,000 test images.
One seed a run: how far a second seed moves Scala, and what a longer budget changes, is in
[results_followups.md](results_followups.md).

MACs per image of Scala's distilled model (18 tokens: 16 patches, the class and the distillation token) at widths
{', '.join(f'{w:g}' for w in TABLE_WIDTHS)}: {' / '.join(f'{macs[w] / 1e6:.2f} M' for w in TABLE_WIDTHS)}.

{markdown_table(['method', 'params'] + [f'r={w:g}' for w in TABLE_WIDTHS], main_rows)}

Ablations (widths 0.25 to 1.0 by 0.125):

{markdown_table(['variant'] + [f'{w:g}' for w in ABLATION_WIDTHS], ablation_rows)}

![top-1 against MACs]({figure.name})

{comparison(results, train_minutes)}"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    sys.exit(main())
