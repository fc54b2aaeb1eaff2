"""The regime: does Scala's gap to Separate Training close as the training budget, or the model, grows?

On Fashion-MNIST at 5 epochs Scala is 1.7 to 2.4 points below Separate Training, where the paper has it above (+12.9
at r = 0.25), and the gap at 0.25 narrowed from 2.4 to 1.5 points between 5 and 10 epochs. This study trains, for
each budget, Scala, Separate Training (ST) and ST+KD (separate models taught by the same teacher) at r = 0.25 and 1,
the teacher always three times the budget, and reports Scala minus ST against the budget; then the same at the
smallest budget for the default model made twice as deep (`--no-capacity` leaves that out).

    python benchmarks/regime.py                      # 5, 10 and 20 epochs; writes docs/regime.md
    python benchmarks/regime.py --budgets 5 10 20 40
    python benchmarks/regime.py --quick              # the pipeline on a few steps a run, for the test suite

Runs are shared with the other studies of the same --output (the 5-epoch runs are paper_table.py's).
"""
import argparse
import sys
from pathlib import Path

from scalavit.files import write_text_atomically

sys.path.insert(0, str(Path(__file__).parent))
from study import (DEEP_MODEL, Runs, accuracies, command_line, machine_line, open_runs,  # noqa: E402
                   markdown_table, plot_curves, quick_setup, study_arguments, teacher_epochs)

WIDTHS = (0.25, 1.0)


def measure(runs: Runs, epochs: int, teacher: int) -> dict:
    """Test top-1 of the teacher, ST and ST+KD at ``WIDTHS``, and Scala, for one budget and architecture (training
    what is not trained yet), with Scala minus each baseline and the training minutes."""
    trained = {'ST': [runs.separate(w, epochs) for w in WIDTHS],
               'ST+KD': [runs.separate(w, epochs, teacher_epochs=teacher) for w in WIDTHS],
               'Scala': runs.scala(epochs, teacher)}
    top1 = {'teacher': accuracies(runs.teacher(teacher).parent, [1.0])[0],
            'ST': [accuracies(run, [1.0])[0] for run in trained['ST']],
            'ST+KD': [accuracies(run, [1.0])[0] for run in trained['ST+KD']],
            'Scala': accuracies(trained['Scala'], WIDTHS)}
    top1['gaps'] = {f'{other} r={w:g}': top1['Scala'][i] - top1[other][i]
                    for other in ('ST', 'ST+KD') for i, w in enumerate(WIDTHS)}
    top1['minutes'] = (runs.minutes(trained['Scala']), sum(runs.minutes(run) for run in trained['ST']))
    return top1


def table(results: dict, first: str) -> str:
    header = ([first, 'teacher'] + [f'{m} {w:g}' for w in WIDTHS for m in ('ST', 'ST+KD', 'Scala')]
              + [f'Scala - ST {w:g}' for w in WIDTHS] + ['min Scala / ST (2 widths)'])
    rows = [[str(key), f"{r['teacher']:.2f}"]
            + [f"{r[m][i]:.2f}" for i in range(len(WIDTHS)) for m in ('ST', 'ST+KD', 'Scala')]
            + [f"{r['gaps'][f'ST r={w:g}']:+.2f}" for w in WIDTHS] + ['{:.1f} / {:.1f}'.format(*r['minutes'])]
            for key, r in results.items()]
    return markdown_table(header, rows)


def main() -> None:
    parser = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/regime.md')
    parser.add_argument('--budgets', type=int, nargs='+', default=[5, 10, 20], help='epoch budgets, smallest first')
    parser.add_argument('--capacity', action=argparse.BooleanOptionalAction, default=True,
                        help='also the default model against one twice as deep, at the smallest budget')
    args = parser.parse_args()
    common = quick_setup(args)
    runs = open_runs(args, common)
    budgets = sorted(args.budgets)  # the cheap budgets first: a stopped study has them
    by_budget = {epochs: measure(runs, epochs, teacher_epochs(args, epochs)) for epochs in budgets}
    first, first_teacher = budgets[0], teacher_epochs(args, budgets[0])
    by_depth = {'default (depth 4)': by_budget[first],
                'deeper (depth 8)': measure(runs.deeper(), first, first_teacher)} if args.capacity else {}

    figure = args.doc.with_name(args.doc.stem + '_gap.png')  # docs/regime_gap.png beside docs/regime.md
    plot_curves({name: {e: by_budget[e]['gaps'][name] for e in budgets} for name in by_budget[first]['gaps']}, figure,
                'epochs', 'Scala minus the baseline (points)', 'Scala - ST and Scala - ST+KD against the budget')
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    matched = {w: [e for e in budgets if by_budget[e]['gaps'][f'ST r={w:g}'] >= 0] for w in WIDTHS}
    trend = {w: ' → '.join(f"{by_budget[e]['gaps'][f'ST r={w:g}']:+.2f}" for e in budgets) for w in WIDTHS}
    capacity = 'The capacity axis was not run (--no-capacity).'
    if by_depth:
        deep_gaps = {w: [r['gaps'][f'ST r={w:g}'] for r in by_depth.values()] for w in WIDTHS}
        capacity = f"""## Capacity: the default model against one twice as deep

The same runs at {first} epochs (teacher {first_teacher}) with `{DEEP_MODEL}` (8 blocks instead of 4; its teacher is
the deep separate model of width 1):

{table(by_depth, 'model')}

Scala minus ST at r = 0.25: {deep_gaps[0.25][0]:+.2f} with depth 4, {deep_gaps[0.25][1]:+.2f} with depth 8; at
r = 1: {deep_gaps[1.0][0]:+.2f} and {deep_gaps[1.0][1]:+.2f}."""
    text = f"""# The regime: Scala against Separate Training as the budget and the model grow

`{command_line('regime.py')}`{quick}: for each budget, Separate Training (ST) and ST+KD at r = 0.25 and 1, and Scala
(all 13 widths), seed 0; the teacher of Scala and ST+KD is a separate model of width 1 trained three times the
budget. On {machine_line()}. Test top-1 (%) after the last epoch, and training minutes:

{table(by_budget, 'epochs')}

![Scala minus the baselines against the budget]({figure.name})

Scala minus ST, by budget ({', '.join(map(str, budgets))} epochs): at r = 0.25 {trend[0.25]}; at r = 1 {trend[1.0]}.
Scala matches or beats ST at r = 0.25 {('at ' + ', '.join(map(str, matched[0.25])) + ' epochs') if matched[0.25]
else 'at none of these budgets'}, and at r = 1 {('at ' + ', '.join(map(str, matched[1.0])) + ' epochs')
if matched[1.0] else 'at none of them'}. {runs.seed_note(first, first_teacher, WIDTHS)}

{capacity}
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
