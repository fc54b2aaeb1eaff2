"""Transfer on the built-in data: Scala trained on five Fashion-MNIST classes, moved to the other five.

Fashion-MNIST's ten classes are split into two disjoint halves, each with its own train and test images. Scala is
trained on the first half (the source); on the second half, at the same epoch budget, the study compares
(a) Scala fine-tuning from the source (`--init`), (b) the linear probe from the source at every width
(`--init --freeze-backbone`), (c) Scala trained from scratch and (d) separately trained models at 0.25 / 0.5 / 0.75 /
1.0. Every width's test top-1 goes to docs/transfer.md with a plot, the command and the time each run took.

    python studies/transfer.py                 # the study (writes docs/transfer.md)
    python studies/transfer.py --quick         # the same pipeline on a few steps a run, for the test suite

A stopped study continues where it stopped: finished runs are reused, interrupted ones resumed.
"""
import sys
from pathlib import Path


from scalavit.data import FashionMNIST
from scalavit.files import write_text_atomically
from scalavit.model import FASHION_MODEL

sys.path.insert(0, str(Path(__file__).parent))
from study import (Timings, command_line, fashion_subset, last_row, machine_line, markdown_table,  # noqa: E402
                   plot_curves, study_arguments, train_once)

HALVES = {'source': range(0, 5), 'target': range(5, 10)}
SEPARATE_WIDTHS = (0.25, 0.5, 0.75, 1.0)
TABLE_WIDTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def accuracy(run: Path, width: float) -> float:
    return last_row(run)[f'top1@{width:g}']


def main() -> None:
    parser = study_arguments(__doc__.split('\n\n')[0], 'runs/transfer', 'docs/transfer.md', teacher=False)
    parser.add_argument('--per-class', type=int, default=6000, help='training images a class (6,000: all)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.quick:  # never mixes with, or overwrites, the real study
        args.output = args.output.with_name(args.output.name + '_quick')
        args.doc, args.per_class = args.output / 'transfer.md', 20
    data = {half: fashion_subset(args.output / f'data_{half}', args.per_class, 20 if args.quick else 1000, labels)
            for half, labels in HALVES.items()}
    common = dict(model=FASHION_MODEL, epochs=args.epochs, seed=args.seed, workers=1,
                  **(dict(max_steps=3, batch_size=16) if args.quick else {}))
    timings = Timings(args.output / 'timings.json')
    source = train_once(args.output, timings, 'source Scala', common, data=str(data['source']),
                        full_warmup_epochs=0 if args.quick else 1)
    target = dict(common, data=str(data['target']))
    runs = {
        'Scala fine-tuned': train_once(args.output, timings, 'Scala fine-tuned', target, init=str(source),
                                       full_warmup_epochs=0),
        'linear probe': train_once(args.output, timings, 'linear probe', target, init=str(source),
                                   freeze_backbone=True, full_warmup_epochs=0),
        'Scala from scratch': train_once(args.output, timings, 'Scala from scratch', target,
                                         full_warmup_epochs=0 if args.quick else 1),
    }
    separate = {w: train_once(args.output, timings, f'ST {w}', target, method='separate', width=w)
                for w in SEPARATE_WIDTHS}

    curves = {name: {w: accuracy(run, w) for w in TABLE_WIDTHS} for name, run in runs.items()}
    curves['separate (one model a width)'] = {w: accuracy(run, 1.0) for w, run in separate.items()}
    rows = [[name] + [f"{points[w]:.1f}" if w in points else '' for w in TABLE_WIDTHS]
            for name, points in curves.items()]
    figure = args.doc.parent / 'transfer_top1_by_width.png'
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, figure, 'width ratio r', 'top-1 on the target classes (%)')
    minutes = {name: timings.seconds.get(f'train {name}', 0) / 60 for name in
               ['source Scala', *runs, *(f'ST {w}' for w in SEPARATE_WIDTHS)]}
    command = command_line('transfer.py')
    text = f"""# Transfer: Scala trained on five classes, moved to the other five

`{command}`, seed {args.seed}, on {machine_line()};
{timings.total_hours() * 60:.0f} minutes of training in all{' (3 steps a run: a pipeline check, not a result)'
                                                         if args.quick else ''}.

Fashion-MNIST split by class: source = {', '.join(FashionMNIST.classes[i] for i in HALVES['source'])}; target =
{', '.join(FashionMNIST.classes[i] for i in HALVES['target'])}; {args.per_class} training images a class from the
training split, the test images of those classes from the test split. Model `{FASHION_MODEL}` (13 widths, 0.25 to 1
by 1/16); every run {args.epochs} epochs of the default recipe. The source is Scala on the source classes (source
top-1 at r = 1: {accuracy(source, 1.0):.1f}%). On the target: Scala fine-tuned from the source (`--init`, no
full-width warm-up); the linear probe (`--init --freeze-backbone`: one classifier read at every width's channels);
Scala from scratch; and a separately trained model at each of {', '.join(f'{w:g}' for w in SEPARATE_WIDTHS)}.

Test top-1 (%) on the target classes:

{markdown_table(['run'] + [f'r={w:g}' for w in TABLE_WIDTHS], rows)}

![top-1 by width]({figure.name})

Training minutes: {'; '.join(f'{name} {m:.1f}' for name, m in minutes.items())}.
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
