"""Isolated Activation against constant activation: does training the smallest width at every step help or hurt?

The paper's Fig. 4 finds that US-Net without always training the smallest width (the sandwich rule's constant
activation) gains +1.8 points on average at the other widths and loses at the smallest, and proposes Isolated
Activation (the smallest width takes the other end of the channels) as the way to keep the smallest trained without
that cost. This study trains Scala, Scala without Isolated Activation, and both with the smallest width drawn like the
others (`--no-always-smallest`), and US-Net with and without it, all with one budget, and reports every width.

    python studies/constant_activation.py            # writes docs/constant_activation.md
    python studies/constant_activation.py --quick    # the pipeline on a few steps a run, for the test suite

Runs are shared with the other studies of the same --output (Scala, Scala w/o IA and US-Net are paper_table.py's).
"""
import statistics
import sys
from pathlib import Path

from scalavit.files import write_text_atomically
from scalavit.widths import WidthGrid

sys.path.insert(0, str(Path(__file__).parent))
from study import (accuracies, command_line, machine_line, open_runs, markdown_table,  # noqa: E402
                   plot_curves, quick_setup, study_arguments, teacher_epochs)

WIDTHS = WidthGrid().widths
PAPER_GAIN_OTHER_WIDTHS = 1.8  # US-Net without constant activation, mean over the widths above the smallest


def main() -> None:
    args = study_arguments(__doc__.split('\n\n')[0], 'runs/studies', 'docs/constant_activation.md').parse_args()
    common = quick_setup(args)
    epochs, teacher = args.epochs, teacher_epochs(args)
    runs = open_runs(args, common)
    trained = {
        'Scala': runs.scala(epochs, teacher),
        'Scala w/o CA': runs.scala(epochs, teacher, label='Scala w/o CA', always_smallest=False),
        'Scala w/o IA': runs.scala(epochs, teacher, label='Scala w/o IA', isolated_activation=False),
        'Scala w/o IA w/o CA': runs.scala(epochs, teacher, label='Scala w/o IA w/o CA', isolated_activation=False,
                                          always_smallest=False),
        'US-Net': runs.usnet(epochs),
        'US-Net w/o CA': runs.usnet(epochs, label='US-Net w/o CA', always_smallest=False),
    }
    top1 = {name: accuracies(run, WIDTHS) for name, run in trained.items()}

    def effect(name: str, without: str) -> tuple[float, float]:
        """(mean gain over the widths above the smallest, gain at the smallest) of dropping constant activation."""
        gains = [b - a for a, b in zip(top1[name], top1[without])]
        return statistics.mean(gains[1:]), gains[0]

    pairs = {'Scala': 'Scala w/o CA', 'Scala w/o IA': 'Scala w/o IA w/o CA', 'US-Net': 'US-Net w/o CA'}
    effects = {name: effect(name, without) for name, without in pairs.items()}
    rows = [[name] + [f'{a:.2f}' for a in values]
            + [f'{statistics.mean(values):.2f}', f'{runs.minutes(trained[name]):.1f}'] for name, values in top1.items()]
    effect_rows = [[f'{name} → {pairs[name]}', f'{other:+.2f}', f'{smallest:+.2f}'] for name, (other, smallest)
                   in effects.items()]
    figure = args.doc.parent / 'constant_activation.png'
    plot_curves({name: dict(zip(WIDTHS, values)) for name, values in top1.items()}, figure, 'width ratio r',
                'test top-1 (%)', f'{epochs} epochs, seed 0')
    quick = ' (3 steps a run: a pipeline check, not a result)' if args.quick else ''
    scala_other, scala_smallest = effects['Scala']
    usnet_other, usnet_smallest = effects['US-Net']
    text = f"""# Isolated Activation against constant activation

`{command_line('constant_activation.py')}`{quick}: {epochs} epochs a run (the teacher of the Scala runs
{teacher}), seed 0, on {machine_line()}. *w/o CA*: the smallest width is not trained at every step; the step's
narrowest sub-network is drawn from every width below the largest (`scalavit train --no-always-smallest`), and for
Scala the three sub-networks are taught in order of width. *w/o IA*: the smallest width takes the first channels, as
the others do. Test top-1 (%) after the last epoch, and training minutes:

{markdown_table(['run'] + [f'{w:g}' for w in WIDTHS] + ['mean', 'training min'], rows)}

Dropping constant activation (points; positive: better without it), mean over the widths above the smallest and at
the smallest:

{markdown_table(['change', 'widths above the smallest', 'smallest width'], effect_rows)}

![top-1 by width]({figure.name})

The paper (Fig. 4, US-Net on ImageNet): without constant activation, +{PAPER_GAIN_OTHER_WIDTHS} on average at the other
widths and a loss at the smallest. Here US-Net w/o CA: {usnet_other:+.2f} at the other widths, {usnet_smallest:+.2f} at
the smallest; Scala w/o CA: {scala_other:+.2f} and {scala_smallest:+.2f}. {runs.seed_note(epochs, teacher, WIDTHS)}
"""
    write_text_atomically(args.doc, text)
    print(text)


if __name__ == '__main__':
    main()
