"""The slicing bound: Scala with its smallest width at 0.125, 0.25, 0.375 or 0.5 (the largest 1.0), one budget.

A lower bound makes one model serve a wider range of costs; the question is what that flexibility costs the widths
every model has. The grid step is 1/16 for every bound, so each width's channels split evenly into the model's three
heads. Reported: top-1 at every width each run has, the mean over the widths all four share (0.5 to 1), and the
trade-off of the range of widths against that mean.

    python studies/slicing_bound.py             # writes docs/slicing_bound.md
    python studies/slicing_bound.py --quick     # the pipeline on a few steps a run, for the test suite

Runs are shared with the other studies of the same --output (the 0.25 run is paper_table.py's Scala).
"""
import statistics
import sys
from pathlib import Path

from scalavit.files import write_text_atomically
from scalavit.widths import WidthGrid

sys.path.insert(0, str(Path(__file__).parent))
from study import (accuracies, command_line, machine_line, open_runs, markdown_table,  # noqa: E402
                   plot_curves, quick_setup, study_arguments, teacher_epochs)

BOUNDS = (0.125, 0.25, 0.375, 0.5)
SHARED = WidthGrid(0.5, 1.0).widths  # the widths of every run


def main() -> None:
    args = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/slicing_bound.md').parse_args()
    common = quick_setup(args)
    epochs, teacher = args.epochs, teacher_epochs(args)
    runs = open_runs(args, common)
    trained = {s: runs.scala(epochs, teacher, **({} if s == 0.25 else dict(label=f'Scala smallest {s}', smallest=s)))
               for s in BOUNDS}
    grids = {s: WidthGrid(s, 1.0).widths for s in BOUNDS}
    top1 = {s: dict(zip(grids[s], accuracies(run, grids[s]))) for s, run in trained.items()}
    all_widths = grids[BOUNDS[0]]
    rows = [[f'{s:g}', str(len(grids[s]))] + [f'{top1[s][w]:.2f}' if w in top1[s] else '' for w in all_widths]
            + [f'{statistics.mean(top1[s][w] for w in SHARED):.2f}', f'{runs.minutes(trained[s]):.1f}']
            for s in BOUNDS]
    shared_mean = {s: statistics.mean(top1[s][w] for w in SHARED) for s in BOUNDS}
    figure = args.doc.parent / 'slicing_bound.png'
    plot_curves({f'smallest {s:g}': top1[s] for s in BOUNDS}, figure, 'width ratio r', 'test top-1 (%)',
                f'Scala, {epochs} epochs, seed 0')
    trade_off = args.doc.parent / 'slicing_bound_trade_off.png'
    plot_curves({'Scala': {1 - s: shared_mean[s] for s in BOUNDS}}, trade_off,
                'range of widths served (1 - smallest)', f'mean top-1 at r = {SHARED[0]:g} to 1 (%)')
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    text = f"""# The slicing bound: how small the smallest width may be

`{command_line('slicing_bound.py')}`{quick}: Scala, {epochs} epochs a run (teacher {teacher} epochs), seed 0, grid step
1/16, on {machine_line()}. Test top-1 (%) after the last epoch at every width of each run; the mean over the widths
all runs share ({SHARED[0]:g} to 1); training minutes:

{markdown_table(['smallest', 'widths', *[f'{w:g}' for w in all_widths], f'mean {SHARED[0]:g}-1', 'training min'], rows)}

![top-1 by width]({figure.name})

The flexibility-accuracy trade-off: the range of widths one model serves against its mean top-1 at the widths all
share ({', '.join(f'smallest {s:g}: {shared_mean[s]:.2f}' for s in BOUNDS)}).

![trade-off]({trade_off.name})

{runs.seed_note(epochs, teacher, SHARED)}
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
