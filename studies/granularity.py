"""Granularity: Scala with a width grid of step 1/4, 1/8, 1/16 and 1/32 (X = 4, 7, 13, 25 widths), one budget.

A Scala step trains the full and the smallest width and two intermediate ones, so with X widths each intermediate
width is trained in about xi = 2/(X-2) of the steps: with X = 4 every width trains at every step, and only weight
sharing and distillation set Scala apart from Separate Training. The paper (Table 4 / Table 9, DeiT-S) finds X = 25 /
13 / 7 / 4 give 58.4 / 58.7 / 59.8 / 59.8 at r = 0.25 and 76.2 / 76.1 / 76.5 / 76.7 at r = 1.

    python studies/granularity.py             # writes docs/granularity.md
    python studies/granularity.py --quick     # the pipeline on a few steps a run, for the test suite

Runs are shared with the other studies of the same --output (the 1/16 run is paper_table.py's Scala).
"""
import statistics
import sys
from pathlib import Path

from scalavit.files import write_text_atomically

sys.path.insert(0, str(Path(__file__).parent))
from study import (accuracies, command_line, machine_line, open_runs, markdown_table,  # noqa: E402
                   plot_curves, quick_setup, study_arguments, teacher_epochs)

STEPS = (4, 8, 16, 32)  # granularity 1/n
COMMON_WIDTHS = (0.25, 0.5, 0.75, 1.0)  # on every grid
PAPER = {25: (58.4, 76.2), 13: (58.7, 76.1), 7: (59.8, 76.5), 4: (59.8, 76.7)}  # X: top-1 at r = 0.25, 1


def main() -> None:
    args = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/granularity.md').parse_args()
    common = quick_setup(args)
    epochs, teacher = args.epochs, teacher_epochs(args)
    runs = open_runs(args, common)
    trained = {n: runs.scala(epochs, teacher, **({} if n == 16 else dict(label=f'Scala grid 1-{n}', granularity=1 / n)))
               for n in STEPS}
    count = {n: round(0.75 * n) + 1 for n in STEPS}  # widths 0.25 to 1 by 1/n
    top1 = {n: accuracies(run, COMMON_WIDTHS) for n, run in trained.items()}
    rows = []
    for n in STEPS:
        x = count[n]
        paper = PAPER.get(x, (None, None))
        rows.append([f'1/{n}', str(x), f'{2 / (x - 2) * epochs:.2f}', *(f'{a:.2f}' for a in top1[n]),
                     f'{statistics.mean(top1[n]):.2f}', f'{runs.minutes(trained[n]):.1f}',
                     ' / '.join(f'{p}' for p in paper)])
    figure = args.doc.parent / 'granularity.png'
    plot_curves({f'X = {count[n]}': dict(zip(COMMON_WIDTHS, top1[n])) for n in STEPS}, figure, 'width ratio r',
                'test top-1 (%)', f'Scala, {epochs} epochs, seed 0')
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    best_small = max(STEPS, key=lambda n: top1[n][0])
    best_full = max(STEPS, key=lambda n: top1[n][-1])
    text = f"""# Granularity: how many widths one Scala model trains

`{command_line('granularity.py')}`{quick}: Scala, {epochs} epochs a run (teacher {teacher} epochs), seed 0, on
{machine_line()}. xi: the epochs each intermediate width is expected to train, 2/(X-2) x {epochs}. Test top-1 (%) after
the last epoch at the widths every grid has, and training minutes:

{markdown_table(['granularity', 'X', 'xi (epochs)'] + [f'r={w:g}' for w in COMMON_WIDTHS]
                + ['mean', 'training min', 'paper r=0.25 / 1'], rows)}

![top-1 by width]({figure.name})

Best at r = 0.25: X = {count[best_small]} ({top1[best_small][0]:.2f}); best at r = 1: X = {count[best_full]}
({top1[best_full][-1]:.2f}); the paper finds the coarser grids slightly better at both (X = 4: +1.1 at 0.25 and +0.6 at
1 over X = 13). {runs.seed_note(epochs, teacher, COMMON_WIDTHS)}
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
