"""What the studies under studies/ share: runs trained once and reused, the time each stage took, the data they
train on, and the pieces of the pages they write.

A run is named, and lives in ``<output>/<name>``; a study that asks for a run that is already trained reuses it, one
that was interrupted is resumed, and a name that holds a run of another configuration is refused. So a stopped study
continues where it stopped, and studies sharing an output folder share the runs they have in common.

Weights stay on the machine that trained them, but each finished run's configuration, log and time are kept in git
beside the pages (``docs/data/study_runs/``): a study continued on a new machine takes its finished runs' results from
there, and trains again only a run whose weights it needs (a teacher with students still to train). A run older than
that record is known by its row of the runs page (``docs/study_runs.md``) alone: its top-1 and minutes are taken from
there, and it is trained again only if its weights are needed.
"""
import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import matplotlib
import torch
from PIL import Image

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from scalavit.checkpoint import load_checkpoint  # noqa: E402
from scalavit.data import FASHION_MNIST_ROOT, FashionMNIST, read_fashion_mnist  # noqa: E402
from scalavit.evaluate import cpu_name, evaluate  # noqa: E402
from scalavit.files import write_atomically, write_text_atomically  # noqa: E402
from scalavit.model import FASHION_MODEL  # noqa: E402
from scalavit.report import read_report, write_report  # noqa: E402
from scalavit.train import TrainConfig, train  # noqa: E402

# A run's name holds its budget and seed, so what may differ when it is reused is only where it is and --quick's cap.
_MAY_DIFFER = {'output', 'max_steps'}
DISTILLED_MODEL = 'scala_vit_mini_distilled_patch7_28'
DEEP_MODEL, DEEP_DISTILLED_MODEL = 'scala_vit_mini_deep_patch7_28', 'scala_vit_mini_deep_distilled_patch7_28'
GRAD_STATS_EVERY = 50  # every Scala and US-Net run records its gradients this often, for grad_interference.py


class Timings:
    """Seconds each stage of the study took, kept in a file so that a continued study adds to them (and, with
    ``kept``, in the record of the runs too: a machine's own file wins over it)."""

    def __init__(self, path: Path, kept: Optional[Path] = None):
        self.paths = [path] + ([kept] if kept else [])
        self.seconds = {}
        for file in reversed(self.paths):
            self.seconds.update(json.loads(file.read_text()) if file.is_file() else {})

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(seconds, 1)
        self.save()

    def save(self) -> None:
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(self.seconds, indent=2) + '\n')

    def total_hours(self, stages=None) -> float:
        return sum(s for stage, s in self.seconds.items() if stages is None or stage in stages) / 3600

    def minutes(self, kind: str) -> float:
        """Minutes of all the stages of one kind: 'train' or 'eval'."""
        return sum(s for stage, s in self.seconds.items() if stage.startswith(kind + ' ')) / 60


def run_dir(root: Path, name: str) -> Path:
    return root / name.replace('/', '').replace(' ', '_').replace('.', '').replace('+', 'plus')


def _comparable(config: dict) -> dict:
    """A run's configuration as it is compared: its teacher by run, wherever the runs folder is."""
    return {**config, 'teacher': Path(config['teacher']).parent.name if config.get('teacher') else None}


def _check_same_run(output: Path, config: TrainConfig) -> None:
    saved_file = output / 'config.json'
    if not saved_file.is_file():
        return
    saved, asked = json.loads(saved_file.read_text()), json.loads(json.dumps(dataclasses.asdict(config)))
    for field in dataclasses.fields(TrainConfig):  # an option added since that run was made had its default there
        saved.setdefault(field.name, json.loads(json.dumps(field.default)))
    saved, asked = _comparable(saved), _comparable(asked)
    differ = [key for key in asked if key not in _MAY_DIFFER and saved[key] != asked[key]]
    if differ:
        key = differ[0]
        sys.exit(f"{output} holds a run with {key}={saved.get(key)!r}, this study asks for {asked[key]!r}; "
                 "remove that folder or give the study another --output")


def log_finished(run: Path, config: dict) -> bool:
    """Whether ``run``'s log reached the end of its budget (a run capped by --quick's max_steps: any epoch)."""
    if not (run / 'log.jsonl').is_file():
        return False
    return config.get('max_steps') is not None or last_row(run).get('epoch') == config['epochs']


def _finished(output: Path, config: TrainConfig) -> Optional[str]:
    """'weights' when the run's checkpoint is at the end of its budget, 'record' when only its kept configuration
    and log are here and reached it, None when it has still to train."""
    if (output / 'last.pt').exists():
        checkpoint = load_checkpoint(output)
        done = checkpoint['epoch'] >= config.epochs or checkpoint['step'] >= (config.max_steps or float('inf'))
        return 'weights' if done else None
    return 'record' if log_finished(output, dataclasses.asdict(config)) else None


_KEPT_FILES = ('config.json', 'log.jsonl')


def keep_record(run: Path, kept: Path) -> None:
    """Copy the finished ``run``'s configuration and log into the record ``kept`` (a folder in git)."""
    (kept / run.name).mkdir(parents=True, exist_ok=True)
    for name in _KEPT_FILES:
        write_text_atomically(kept / run.name / name, (run / name).read_text())


def restore_records(root: Path, kept: Path) -> None:
    """Every run of the record ``kept`` that ``root`` lacks, copied in: its results, without its weights."""
    for record in sorted(kept.glob('*/log.jsonl')):
        run = root / record.parent.name
        if run.is_dir() and any(run.iterdir()):
            continue
        run.mkdir(parents=True, exist_ok=True)
        for name in _KEPT_FILES:
            write_text_atomically(run / name, (record.parent / name).read_text())


def logged_seconds(run: Path) -> float:
    """The training seconds of the epochs in ``run``'s log (none: 0)."""
    log = run / 'log.jsonl'
    if not log.is_file():
        return 0.0
    return sum(json.loads(line)['time_s'] for line in log.read_text().splitlines() if line.strip())


def train_once(root: Path, timings: Timings, name: str, common: dict, kept: Optional[Path] = None,
               weights: bool = False, before_training: Optional[Callable[[], object]] = None, **options) -> Path:
    """Train, or continue an interrupted run, or skip a finished one (with ``weights``: one whose checkpoint is here,
    not only its record). A run it trains goes into the record ``kept``; ``before_training`` runs first."""
    output = run_dir(root, name)
    config = TrainConfig(output=str(output), **{**common, **options})
    _check_same_run(output, config)
    finished = _finished(output, config)
    if finished == 'weights' or (finished == 'record' and not weights):
        print(f"[{name}] already trained in {output}" + (' (its record: no weights here)' if finished == 'record'
                                                         else ''))
        return output
    if before_training:
        before_training()
    # A run stopped before its first checkpoint, or known here only by its record, starts again in its own folder.
    resume = str(output) if output.is_dir() and any(output.iterdir()) else None
    # A run continued with a larger budget has its time recorded; a stopped one only its log's epochs.
    earlier = max(timings.seconds.get(f'train {name}', 0), logged_seconds(output)) if resume and not finished else 0
    start = time.perf_counter()
    train(config, resume=resume)
    seconds = earlier + time.perf_counter() - start
    timings.record(f'train {name}', seconds)
    if kept:
        keep_record(output, kept)
    print(f"[{name}] trained in {seconds:.0f} s", flush=True)
    return output


@dataclass
class Runs:
    """The runs of the studies, by what they are: each method's run of a budget and seed is trained once, under one
    name, and every study that needs it gets the same folder."""

    root: Path
    timings: Timings
    common: dict  # the options every run shares (the data, the loader, --quick's cap)
    model: str = FASHION_MODEL
    distilled_model: str = DISTILLED_MODEL
    prefix: str = ''  # names the architecture in the runs' names when it is not the default
    kept: Optional[Path] = None  # the record of finished runs in git (see open_runs)
    weights: bool = False  # every run's checkpoint must be here, not only its record (paper_table.py evaluates them)
    earlier: dict = dataclasses.field(default_factory=dict)  # the runs page's rows, by run: runs older than the record
    from_page: list = dataclasses.field(default_factory=list)  # the runs this study took from those rows

    def deeper(self) -> 'Runs':
        """The same runs of the default model made twice as deep (the capacity axis)."""
        return dataclasses.replace(self, model=DEEP_MODEL, distilled_model=DEEP_DISTILLED_MODEL, prefix='deep ')

    def train(self, name: str, weights: bool = False, **options) -> Path:
        output = run_dir(self.root, name)
        if not (weights or self.weights or (output / 'log.jsonl').is_file()) and output.name in self.earlier:
            print(f"[{name}] trained on an earlier machine: its row of the runs page (no weights or log here)")
            self.from_page.append(output.name)
            return output
        return train_once(self.root, self.timings, name, self.common, self.kept, weights or self.weights, **options)

    def has(self, run: Path) -> bool:
        """Whether ``run`` is finished or known by its row of the runs page."""
        return (run / 'log.jsonl').is_file() or run.name in self.earlier

    def top1(self, run: Path, widths, earlier: bool = False) -> list[float]:
        """The run's test top-1 at ``widths`` after its last epoch: from its log, or from its row of the runs page
        (with ``earlier``, the row of the run as an earlier machine trained it, if it was trained again since)."""
        name = f'{run.name} (earlier)' if earlier and f'{run.name} (earlier)' in self.earlier else run.name
        if name == run.name and (run / 'log.jsonl').is_file():
            return accuracies(run, widths)
        listed = dict(cell.split(': ') for cell in self.earlier[name][-1].split(' / '))
        return [float(listed[f'{w:g}']) for w in widths]

    def minutes(self, run: Path) -> float:
        """How long ``run`` trained (its own stage in the timings: the run's folder is its name; or its row of the
        runs page)."""
        return next((seconds / 60 for stage, seconds in self.timings.seconds.items()
                     if stage.startswith('train ') and run_dir(self.root, stage[6:]) == run),
                    float(self.earlier[run.name][6]) if run.name in self.earlier else float('nan'))

    def teacher(self, epochs: int, weights: bool = False) -> Path:
        """The checkpoint of the separate full-width model that teaches Scala and ST+KD (seed 0); with ``weights``
        it is trained here if only its record is (a student is about to train)."""
        run = self.train(f'{self.prefix}teacher {epochs}ep', weights, method='separate', width=1.0,
                         model=self.model, epochs=epochs, seed=0)
        return (run / 'last.pt').resolve()  # the same in every run's configuration, wherever the study starts

    def taught(self, name: str, teacher_epochs: int, **options) -> Path:
        """A run taught by the teacher of ``teacher_epochs``, whose weights are needed only if this run trains."""
        teacher = (run_dir(self.root, f'{self.prefix}teacher {teacher_epochs}ep') / 'last.pt').resolve()
        return self.train(name, teacher=str(teacher), model=self.distilled_model,
                          before_training=lambda: self.teacher(teacher_epochs, weights=True), **options)

    def separate(self, width: float, epochs: int, seed: int = 0, teacher_epochs: int = None) -> Path:
        """Separate Training at ``width``; with ``teacher_epochs``, ST+KD: taught by that teacher (DeiT's hard
        distillation, on the distilled model)."""
        if teacher_epochs is None:
            return self.train(f'{self.prefix}ST {width} {epochs}ep s{seed}', method='separate', width=width,
                              model=self.model, epochs=epochs, seed=seed)
        return self.taught(f'{self.prefix}ST+KD {width} {epochs}ep s{seed} t{teacher_epochs}', teacher_epochs,
                           method='separate', width=width, epochs=epochs, seed=seed)

    def scala(self, epochs: int, teacher_epochs: int, seed: int = 0, label: str = 'Scala', **options) -> Path:
        """Scala (or, with ``options``, a variant named ``label``) on the distilled model, taught by the teacher."""
        return self.taught(f'{self.prefix}{label} {epochs}ep s{seed} t{teacher_epochs}', teacher_epochs,
                           method='scala', epochs=epochs, seed=seed, grad_stats=GRAD_STATS_EVERY, **options)

    def seed_spread(self, epochs: int, teacher_epochs: int, widths) -> Optional[tuple[float, float]]:
        """What two seeds of Scala (paper_table.py trains them) differ by, at most at one of ``widths`` and in their
        mean: the yardstick of every difference. None before both seeds are trained."""
        runs = [run_dir(self.root, f'Scala {epochs}ep s{seed} t{teacher_epochs}') for seed in (0, 1)]
        if not all(self.has(run) for run in runs):
            return None
        seeds = [self.top1(run, widths) for run in runs]
        return max(abs(a - b) for a, b in zip(*seeds)), abs(sum(seeds[0]) - sum(seeds[1])) / len(widths)

    def seed_note(self, epochs: int, teacher_epochs: int, widths) -> str:
        spread = self.seed_spread(epochs, teacher_epochs, widths)
        if spread is None:
            return 'The seed-to-seed spread of Scala is measured by paper_table.py, not run yet for this budget.'
        return (f'Two seeds of Scala (paper_table.py) differ by up to {spread[0]:.2f} points at one of these widths '
                f'and by {spread[1]:.2f} in their mean: smaller differences are not findings.')

    def usnet(self, epochs: int, seed: int = 0, label: str = 'US-Net', **options) -> Path:
        return self.train(f'{self.prefix}{label} {epochs}ep s{seed}', method='usnet', model=self.model,
                          epochs=epochs, seed=seed, grad_stats=GRAD_STATS_EVERY, **options)


def open_runs(args: argparse.Namespace, common: dict, weights: bool = False) -> Runs:
    """The runs under --output, with the record of finished runs kept in the data folder beside the page (``docs/data/study_runs/`` for the
    real studies) restored into it first: a new machine reuses every result recorded there."""
    kept = args.doc.parent / 'data' / 'study_runs'
    restore_records(args.output, kept)
    earlier = {row[0]: row for row in earlier_rows(args.doc.parent / 'study_runs.md')}
    return Runs(args.output, Timings(args.output / 'timings.json', kept / 'timings.json'), common, kept=kept,
                weights=weights, earlier=earlier)


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


def last_row(run: Path) -> dict:
    """The run's last log row: its losses, and the test top-1 of every width after its last epoch."""
    return json.loads((run / 'log.jsonl').read_text().splitlines()[-1])


def accuracies(run: Path, widths) -> list[float]:
    row = last_row(run)
    return [row[f'top1@{w:g}'] for w in widths]


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


def plot_curves(curves: dict[str, dict[float, float]], path: Path, xlabel: str, ylabel: str,
                title: str = '') -> None:
    """One line per curve, ``{x: y}``, written atomically as a PNG."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curves.items():
        xs = sorted(points)
        axes.plot(xs, [points[x] for x in xs], marker='o', label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format='png', dpi=110))
    plt.close(figure)


def fashion_subset(root: Path, per_class: int, val_per_class: int, labels=range(10),
                   source: Path = FASHION_MNIST_ROOT) -> Path:
    """An image folder of the Fashion-MNIST classes ``labels`` (read from the files in ``source``): ``per_class``
    training images of each from the training split, ``val_per_class`` from the test split (written once; a
    finished folder is reused)."""
    if (root / 'done').is_file():
        return root
    for split, source_split, count in (('train', 'train', per_class), ('val', 'test', val_per_class)):
        images, targets = read_fashion_mnist(source_split, source)
        for label in labels:
            folder = root / split / FashionMNIST.classes[label].replace('/', '-')
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(torch.nonzero(targets == label).flatten()[:count].tolist()):
                Image.fromarray(images[index].numpy(), 'L').save(folder / f'{i}.png')
    (root / 'done').write_text('')
    return root


def study_arguments(description: str, output: str, doc: str, teacher: bool = True) -> argparse.ArgumentParser:
    """The options every study has: --quick, --output, --doc, --epochs and (with a teacher) --teacher-epochs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--quick', action='store_true',
                        help='3 steps a run on a few images, the page written beside the runs: checks the pipeline')
    parser.add_argument('--output', type=Path, default=Path(output), help='where the runs are (shared by studies)')
    parser.add_argument('--doc', type=Path, default=Path(doc))
    parser.add_argument('--epochs', type=int, default=5,
                        help='the epoch budget of every run' + (' but the teacher' if teacher else ''))
    if teacher:
        parser.add_argument('--teacher-epochs', type=int, help="the teacher's budget (default: 3x --epochs)")
    return parser


def teacher_epochs(args: argparse.Namespace, epochs: int = None) -> int:
    """The teacher's budget: --teacher-epochs, else three times the students' (the paper: 300 against 100)."""
    return args.teacher_epochs or 3 * (epochs or args.epochs)


def quick_setup(args: argparse.Namespace) -> dict:
    """The training options every run of a study shares; under --quick the runs and the page go to
    ``<output>_quick`` and train 3 steps on a small image folder, never touching the real study."""
    common = dict(workers=1)
    if args.quick:
        args.output = args.output.with_name(args.output.name + '_quick')
        args.doc = args.output / args.doc.name
        data = fashion_subset(args.output / 'data', per_class=8, val_per_class=4)
        common.update(data=str(data), max_steps=3, batch_size=16, full_warmup_epochs=0)
    return common


def command_line(script: str) -> str:
    return f'python studies/{script}' + ''.join(f' {a}' for a in sys.argv[1:])


def machine_line() -> str:
    return f"{cpu_name()} with {torch.get_num_threads()} threads (torch {torch.__version__})"


def finished_runs(root: Path) -> list[Path]:
    """The runs under ``root`` that reached the end of their budget (not those still training)."""
    return [log.parent for log in sorted(root.glob('*/log.jsonl'))
            if log_finished(log.parent, json.loads((log.parent / 'config.json').read_text()))]


def earlier_rows(doc: Path, listed: Optional[dict[str, list[str]]] = None) -> list[list[str]]:
    """The rows of the page ``doc`` for runs not in ``listed`` (rows by run): runs of earlier machines that neither
    the runs folder nor the record holds any more, kept as the page had them. A run trained again since, with
    another result, keeps its earlier row too, as ``<run> (earlier)``."""
    if not doc.is_file():
        return []
    listed = listed or {}
    rows = [line.strip()[2:-2].split(' | ') for line in doc.read_text().splitlines() if line.startswith('| ')]
    return [row if row[0] not in listed else [f'{row[0]} (earlier)', *row[1:]]
            for row in rows[1:] if row != listed.get(row[0])]  # rows[0]: the header


def run_summary(root: Path, timings: Timings, doc: Path) -> str:
    """Every finished run under ``root``: what it is, how long it trained, and its test top-1 at the quarter widths;
    and the rows that ``doc`` already lists for runs that are gone."""
    defaults = {field.name: json.loads(json.dumps(field.default)) for field in dataclasses.fields(TrainConfig)}
    shown = ('method', 'model', 'epochs', 'seed', 'width', 'smallest', 'granularity', 'teacher')
    rows = []
    for run in finished_runs(root):
        config = json.loads((run / 'config.json').read_text())
        changed = [f'{k}={v}' for k, v in config.items() if k not in shown + ('output', 'data', 'workers', 'max_steps',
                                                                                 'grad_stats') and v != defaults.get(k)]
        row = last_row(run)
        seconds = timings.seconds.get(next((s for s in timings.seconds if s.startswith('train ') and
                                            run_dir(root, s[6:]) == run), ''), float('nan'))
        widths = [w for w in (0.25, 0.5, 0.75, 1.0) if f'top1@{w:g}' in row]
        top1 = ' / '.join(f"{w:g}: {row[f'top1@{w:g}']:.2f}" for w in widths)
        rows.append([run.name, config['method'], str(config['epochs']), str(config['seed']),
                     Path(config['teacher']).parent.name if config.get('teacher') else '', ' '.join(changed),
                     f'{seconds / 60:.1f}', top1])
    rows = sorted(rows + earlier_rows(doc, {row[0]: row for row in rows}))
    return markdown_table(['run', 'method', 'epochs', 'seed', 'teacher', 'options', 'minutes', 'top-1 (%)'], rows)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Every finished run of the studies, as a markdown table, and each '
                                                 'kept in the record beside it (docs/data/study_runs/)')
    parser.add_argument('--output', type=Path, default=Path('runs/studies'))
    parser.add_argument('--doc', type=Path, default=Path('docs/study_runs.md'))
    args = parser.parse_args()
    runs = open_runs(args, {})
    for run in finished_runs(args.output):
        keep_record(run, runs.kept)
    runs.timings.save()
    text = (f"# The studies' runs\n\n`python studies/study.py`: every finished run under `{args.output}` (the "
            f"runs the study pages are made of; their configurations and logs are kept in `{runs.kept}`), on "
            f"{machine_line()}. Test top-1 after the last epoch, on the 10,000 Fashion-MNIST test images for the "
            f"built-in data (a separate model's one width is its 1: ST_025 is the model of width 0.25). A run that "
            f"neither is here nor is kept keeps the row this page had for it, measured where it was trained; one "
            f"trained again since, with another result, keeps its earlier row as `<run> (earlier)`.\n\n"
            f"{run_summary(args.output, runs.timings, args.doc)}\n")
    write_text_atomically(args.doc, text)
    print(text)
