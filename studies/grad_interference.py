"""Gradient interference: how the sub-networks of a Scala step pull on the weights they share, with and without
Isolated Activation.

Every Scala run of the studies records, every 50 steps, each sub-network's gradient and the cosine similarity of
each pair's gradients on the weights both use (`scalavit train --grad-stats 50`, grad_stats.jsonl). This study reads
those of Scala and of Scala without Isolated Activation: does the smallest width dominate the shared weights (its
gradient there larger than the full width's), and does Isolated Activation remove the conflict between them that the
paper says it removes? The paper gives no numbers for this; the page reports what is measured.

    python studies/grad_interference.py             # writes docs/grad_interference.md
    python studies/grad_interference.py --quick     # the pipeline on a few steps a run, for the test suite

The two runs are paper_table.py's (trained here if that study has not run yet).
"""
import json
import statistics
import sys
from pathlib import Path

from scalavit.files import write_text_atomically

sys.path.insert(0, str(Path(__file__).parent))
from study import (command_line, machine_line, open_runs, markdown_table, plot_curves,  # noqa: E402
                   quick_setup, study_arguments, teacher_epochs)

NAMES = ('full', 'upper', 'lower', 'smallest')
PAIRS = [f'{a}|{b}' for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]


def read_rows(run: Path) -> list[dict]:
    """The recorded steps that trained all four sub-networks (the full-width warm-up trains one)."""
    lines = (run / 'grad_stats.jsonl').read_text().splitlines()
    return [row for row in map(json.loads, lines) if 'smallest' in row['norm']]


def mean_of(values) -> float:
    values = [v for v in values if v is not None]  # None: the pair shared no weight at that step
    return statistics.mean(values) if values else float('nan')


def dominance(row: dict) -> float:
    """The smallest width's gradient norm on the weights it shares with the full width, over the full width's."""
    shared = row['pairs']['full|smallest']['all']
    return shared['norm_b'] / shared['norm_a'] if shared['norm_a'] > 0 else float('nan')


def main() -> None:
    args = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/grad_interference.md').parse_args()
    common = quick_setup(args)
    epochs, teacher = args.epochs, teacher_epochs(args)
    runs = open_runs(args, common)
    rows = {'Scala': read_rows(runs.scala(epochs, teacher)),
            'Scala w/o IA': read_rows(runs.scala(epochs, teacher, label='Scala w/o IA', isolated_activation=False))}

    def mean_cosine(name: str, pair: str, group: str = None) -> str:
        shared = (r['pairs'][pair]['groups'][group] if group else r['pairs'][pair]['all'] for r in rows[name])
        return f"{mean_of(s['cosine'] for s in shared):+.3f}"

    pair_rows = [[pair.replace('|', ' and ')] + [mean_cosine(name, pair) for name in rows] for pair in PAIRS]
    groups = list(rows['Scala'][0]['pairs']['full|smallest']['groups']) if rows['Scala'] else []
    group_rows = [[group] + [mean_cosine(name, 'full|smallest', group) for name in rows] for group in groups]
    norm_rows = [[name] + [f"{mean_of(r['norm'][name] for r in rows[run]):.3f}" for run in rows] for name in NAMES]
    ratio = {name: mean_of(dominance(r) for r in rows[name]) for name in rows}
    cosine = {name: mean_of(r['pairs']['full|smallest']['all']['cosine'] for r in rows[name]) for name in rows}

    figures = {'cosine': args.doc.parent / 'grad_interference_cosine.png',
               'ratio': args.doc.parent / 'grad_interference_dominance.png'}
    plot_curves({name: {r['step']: r['pairs']['full|smallest']['all']['cosine'] for r in rows[name]} for name in rows},
                figures['cosine'], 'step', 'cosine(full, smallest) on shared weights')
    plot_curves({name: {r['step']: dominance(r) for r in rows[name]} for name in rows}, figures['ratio'], 'step',
                'smallest / full gradient norm on shared weights')
    steps = {name: len(r) for name, r in rows.items()}
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    dominates = {name: 'dominates' if ratio[name] > 1 else 'does not dominate' for name in rows}
    text = f"""# Gradient interference between the sub-networks of a Scala step

`{command_line('grad_interference.py')}`{quick}: the gradients recorded every 50 steps during paper_table.py's Scala
and Scala w/o IA runs ({epochs} epochs, teacher {teacher} epochs, seed 0; {steps['Scala']} and {steps['Scala w/o IA']}
recorded steps after the full-width warm-up), on {machine_line()}. A sub-network's gradient is what its own backward
pass adds (`scalavit train --grad-stats N`); a pair is compared on the weights both use (where both gradients are
non-zero). Means over the recorded steps.

Cosine similarity of each pair's gradients on the weights they share (negative: they pull those weights apart):

{markdown_table(['pair', *rows], pair_rows)}

The full and the smallest width, by group of weights:

{markdown_table(['weights', *rows], group_rows)}

Each sub-network's whole gradient norm:

{markdown_table(['sub-network', *rows], norm_rows)}

![cosine of full and smallest over training]({figures['cosine'].name})

![smallest over full gradient norm on the shared weights]({figures['ratio'].name})

On the weights it shares with the full width, the smallest width's gradient is {ratio['Scala']:.2f} times the full
width's with Isolated Activation and {ratio['Scala w/o IA']:.2f} times without it: it {dominates['Scala']} them with
IA and {dominates['Scala w/o IA']} them without. Their cosine there is {cosine['Scala']:+.3f} with IA and
{cosine['Scala w/o IA']:+.3f} without: {'IA leaves the two less opposed' if cosine['Scala'] > cosine['Scala w/o IA']
else 'IA does not make the two less opposed'} on what they share.
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
