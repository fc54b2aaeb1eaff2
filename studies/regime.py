"""The regime: does Scala's gap to Separate Training close as the training budget, or the model, grows?

On Fashion-MNIST at 5 epochs Scala is 1.7 to 2.4 points below Separate Training, where the paper has it above (+12.9
at r = 0.25), and the gap at 0.25 narrowed from 2.4 to 1.5 points between 5 and 10 epochs. This study trains, for
each budget, Scala, Separate Training (ST) and ST+KD (separate models taught by the same teacher) at r = 0.25 and 1,
the teacher always three times the budget, and reports Scala minus ST against the budget; then the same at the
smallest budget for the default model made twice as deep (`--no-capacity` leaves that out).

    python studies/regime.py                      # 5, 10 and 20 epochs; writes docs/regime.md
    python studies/regime.py --budgets 5 10 20 40
    python studies/regime.py --budgets 5 10 20 --max-teacher-epochs 30 --kd-budgets 5 10   # a cheaper 20
    python studies/regime.py --quick              # the pipeline on a few steps a run, for the test suite

Runs are shared with the other studies of the same --output (the 5-epoch runs are paper_table.py's).
"""
import argparse
import sys
from pathlib import Path
from typing import Optional

from scalavit.files import write_text_atomically

sys.path.insert(0, str(Path(__file__).parent))
from study import (DEEP_MODEL, Runs, command_line, machine_line, open_runs,  # noqa: E402
                   markdown_table, plot_curves, quick_setup, study_arguments, teacher_epochs)

WIDTHS = (0.25, 1.0)


def measure(runs: Runs, epochs: int, teacher: int, kd: bool = True) -> dict:
    """Test top-1 of the teacher, ST and (with ``kd``) ST+KD at ``WIDTHS``, and Scala, for one budget and
    architecture (training what is not trained yet), with Scala minus each baseline and the training minutes."""
    baselines = ('ST', 'ST+KD') if kd else ('ST',)
    trained = {'ST': [runs.separate(w, epochs) for w in WIDTHS],
               'ST+KD': [runs.separate(w, epochs, teacher_epochs=teacher) for w in WIDTHS] if kd else [],
               'Scala': runs.scala(epochs, teacher)}
    top1 = {name: [runs.top1(run, [1.0])[0] for run in trained[name]] or None for name in baselines}
    # students known only by their rows were taught by the teacher of that machine, if it was trained again since
    taught_earlier = trained['Scala'].name in runs.from_page
    top1['teacher'] = runs.top1(runs.teacher(teacher).parent, [1.0], earlier=taught_earlier)[0]
    top1['teacher epochs'] = teacher
    top1['Scala'] = runs.top1(trained['Scala'], WIDTHS)
    top1['gaps'] = {f'{other} r={w:g}': top1['Scala'][i] - top1[other][i]
                    for other in baselines for i, w in enumerate(WIDTHS)}
    top1['minutes'] = (runs.minutes(trained['Scala']), sum(runs.minutes(run) for run in trained['ST']))
    return top1


def table(results: dict, first: str) -> str:
    def cell(r: dict, method: str, i: int) -> str:
        return f"{r[method][i]:.2f}" if r.get(method) else '-'

    header = ([first, 'teacher (epochs)'] + [f'{m} {w:g}' for w in WIDTHS for m in ('ST', 'ST+KD', 'Scala')]
              + [f'Scala - ST {w:g}' for w in WIDTHS] + ['min Scala / ST (2 widths)'])
    rows = [[str(key), f"{r['teacher']:.2f} ({r['teacher epochs']})"]
            + [cell(r, m, i) for i in range(len(WIDTHS)) for m in ('ST', 'ST+KD', 'Scala')]
            + [f"{r['gaps'][f'ST r={w:g}']:+.2f}" for w in WIDTHS] + ['{:.1f} / {:.1f}'.format(*r['minutes'])]
            for key, r in results.items()]
    return markdown_table(header, rows)


def at_budgets(budgets: list[int], otherwise: str) -> str:
    return f"at {', '.join(map(str, budgets))} epochs" if budgets else otherwise


def within_note(by_budget: dict, spread: Optional[tuple[float, float]]) -> str:
    """The budgets where Scala is below ST by less than two seeds of Scala differ (``spread``: at most at one width,
    and in the mean): there this study shows no difference."""
    if spread is None:
        return ''
    within = {w: [e for e, r in by_budget.items() if -spread[0] < r['gaps'][f'ST r={w:g}'] < 0] for w in WIDTHS}
    parts = [f"r = {w:g} ({', '.join(map(str, budgets))} epochs)" for w, budgets in within.items() if budgets]
    if not parts:
        return ''
    return (f" Scala is below ST by less than those {spread[0]:.2f} points at {' and '.join(parts)}: one seed does not "
            'tell the two apart there.')


def main() -> None:
    parser = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/regime.md')
    parser.add_argument('--budgets', type=int, nargs='+', default=[5, 10, 20], help='epoch budgets, smallest first')
    parser.add_argument('--max-teacher-epochs', type=int,
                        help="the teacher's budget is three times the students' but at most this (default: no cap)")
    parser.add_argument('--kd-budgets', type=int, nargs='+', help='the budgets at which ST+KD is trained (default: all)')
    parser.add_argument('--capacity', action=argparse.BooleanOptionalAction, default=True,
                        help='also the default model against one twice as deep, at the smallest budget')
    args = parser.parse_args()
    common = quick_setup(args)
    runs = open_runs(args, common)
    budgets = sorted(args.budgets)  # the cheap budgets first: a stopped study has them
    kd_budgets = budgets if args.kd_budgets is None else sorted(args.kd_budgets)

    def teacher(epochs: int) -> int:
        return min(teacher_epochs(args, epochs), args.max_teacher_epochs or float('inf'))

    by_budget = {epochs: measure(runs, epochs, teacher(epochs), epochs in kd_budgets) for epochs in budgets}
    first, first_teacher = budgets[0], teacher(budgets[0])
    by_depth = {'default (depth 4)': by_budget[first],
                'deeper (depth 8)': measure(runs.deeper(), first, first_teacher, first in kd_budgets)
                } if args.capacity else {}

    figure = args.doc.with_name(args.doc.stem + '_gap.png')  # docs/regime_gap.png beside docs/regime.md
    gap_names = [f'{other} r={w:g}' for other in ('ST', 'ST+KD') for w in WIDTHS]
    plot_curves({name: {e: by_budget[e]['gaps'][name] for e in budgets if name in by_budget[e]['gaps']}
                 for name in gap_names}, figure,
                'epochs', 'Scala minus the baseline (points)', 'Scala - ST and Scala - ST+KD against the budget')
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    from_page = ('' if not runs.from_page else ', but for the runs trained on an earlier machine and known by their '
                 f"row of `study_runs.md` alone (their logs were not kept): {', '.join(sorted(set(runs.from_page)))}")
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
budget{f' but at most {args.max_teacher_epochs} epochs' if args.max_teacher_epochs else ''} (its epochs in brackets)\
{'' if kd_budgets == budgets else f"; ST+KD at {', '.join(map(str, kd_budgets))} epochs only (-: not run)"}.
On {machine_line()}{from_page}. Test top-1 (%) after the last epoch, and training minutes:

{table(by_budget, 'epochs')}

![Scala minus the baselines against the budget]({figure.name})

Scala minus ST, by budget ({', '.join(map(str, budgets))} epochs): at r = 0.25 {trend[0.25]}; at r = 1 {trend[1.0]}.
Scala matches or beats ST at r = 0.25 {at_budgets(matched[0.25], 'at none of these budgets')}, and at r = 1 \
{at_budgets(matched[1.0], 'at none of them')}. {runs.seed_note(first, first_teacher, WIDTHS)}\
{within_note(by_budget, runs.seed_spread(first, first_teacher, WIDTHS))}

{capacity}
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
