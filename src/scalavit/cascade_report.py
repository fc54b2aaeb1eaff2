"""``scalavit eval RUN --cascade 0.25,1.0``: a cascade's thresholds chosen on calibration images (never the
evaluation split), then measured on the evaluation set beside the static widths: top-1, mean MACs, the share each
stage answered, and latency at batch 1 and 64 against the last width alone."""
import json
import time
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import torch  # noqa: E402
from timm.data import resolve_data_config  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from .cascade import Cascade, calibrate, collect, sweep  # noqa: E402
from .checkpoint import check_same_classes, load_model, weights_digest  # noqa: E402
from .data import (SkipUnreadable, build_calibration_dataset, build_eval_dataset, build_transform,  # noqa: E402
                   collate_readable, describe)
from .evaluate import count_macs  # noqa: E402
from .files import write_atomically, write_text_atomically  # noqa: E402
from .report import read_report  # noqa: E402

CALIBRATION_IMAGES = 5000
LATENCY_IMAGES = 256


def evaluate_cascade(checkpoint: str, widths: list[float], data: Optional[str] = None, device: str = 'cpu',
                     batch_size: int = 256, workers: int = 1, within_points: float = 0.3,
                     calibration: Optional[str] = None, confidence: str = 'probability',
                     model_name: Optional[str] = None, log: Callable[[str], None] = print) -> dict:
    """The cascade ``widths`` of ``checkpoint``: thresholds calibrated to stay within ``within_points`` of the last
    width's top-1, then the whole sweep and the chosen thresholds measured on the evaluation set."""
    device = torch.device(device)
    model, config = load_model(checkpoint, model_name)
    model = model.to(device).eval()
    cascade = Cascade(model, widths, [0.0] * (len(widths) - 1), confidence)  # checks the widths
    data = data or config.get('data')
    if data is None:
        raise ValueError(f"{checkpoint} does not say what it was trained on; name the data with --data")
    data_config = resolve_data_config(model=model)
    transform, in_chans = build_transform(data_config, False), data_config['input_size'][0]
    calibration_set = build_calibration_dataset(data, transform, in_chans, CALIBRATION_IMAGES, calibration)
    evaluation_set, classes = build_eval_dataset(data, transform, in_chans)
    if calibration is not None:
        check_same_classes(classes, calibration_set.classes, f'--data {data}', f'--calibration {calibration}')
    log(f"cascade {' -> '.join(f'{w:g}' for w in cascade.widths)}: thresholds chosen on "
        f"{describe('calibration', calibration_set)}, measured on {describe('evaluation', evaluation_set)}")
    macs = {w: count_macs(model, w, data_config['input_size']) for w in cascade.widths}

    def stages(dataset, what):
        loader = DataLoader(SkipUnreadable(dataset), batch_size, num_workers=workers, collate_fn=collate_readable)
        return collect(model, tqdm(loader, desc=what, delay=2, leave=False), cascade.widths, confidence, device)

    calibration_stages = stages(calibration_set, 'calibrating')
    chosen = calibrate(calibration_stages, macs, within_points)
    measured = stages(evaluation_set, 'evaluating')
    steps = len(cascade.widths) - 1
    cascade.thresholds = list(chosen['thresholds'])
    images = torch.stack([evaluation_set[i][0] for i in range(min(LATENCY_IMAGES, len(evaluation_set)))]).to(device)
    thresholds = sweep(calibration_stages)
    return dict(checkpoint=str(checkpoint), weights_sha256=weights_digest(model.state_dict()), widths=cascade.widths,
                confidence=confidence, within_points=within_points, macs=macs,
                calibration=dict(folder=calibration, images=len(calibration_set), chosen=chosen,
                                 sweep=[calibration_stages.score([t] * steps, macs) for t in thresholds]),
                evaluation=dict(images=measured.correct.shape[1], chosen=measured.score(chosen['thresholds'], macs),
                                sweep=[measured.score([t] * steps, macs) for t in thresholds]),
                latency_ms=latency_against_last_width(cascade, images))


def saved_cascade(checkpoint: str, widths: list[float], data: Optional[str], device: str, within_points: float,
                  calibration: Optional[str], confidence: str, model_name: Optional[str], weights: str) -> dict:
    """The cascade.json beside ``checkpoint`` if it calibrated these grid ``widths`` in this way on these weights
    (``weights``: their ``weights_digest``); otherwise calibrated and measured now, said why, and saved there."""
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    path = run / 'cascade.json'
    wanted = dict(widths=widths, confidence=confidence, within_points=within_points, weights_sha256=weights)
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        saved = None
    except (OSError, ValueError) as error:
        print(f"{path} is unreadable ({error}); calibrating again", flush=True)
        saved = None
    if saved is not None:
        same = all(saved.get(key) == value for key, value in wanted.items()) and (
            saved.get('calibration', {}).get('folder') == calibration)
        if same:
            return saved
        print(f"{path} calibrated another cascade, or other weights, than asked; calibrating again", flush=True)
    result = evaluate_cascade(checkpoint, widths, data, device, within_points=within_points, calibration=calibration,
                              confidence=confidence, model_name=model_name)
    try:
        static_rows = read_report(run)['rows']
    except FileNotFoundError:
        static_rows = []
    write(result, static_rows, run)
    return result


def latency_against_last_width(cascade: Cascade, images: torch.Tensor) -> dict:
    """Mean ms per call of the cascade and of its last width alone, over the same images, at batch 1 and 64."""
    last = cascade.widths[-1]
    if len(images) < 64:  # a small evaluation set: its images again, to fill the batches
        images = images.repeat(-(-64 // len(images)), 1, 1, 1)
    result = {}
    with torch.inference_mode():
        for batch in (1, 64):
            chunks = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
            for name, run in (('cascade', lambda x: cascade(x)), ('last_width', lambda x: cascade.model(x, last))):
                for x in chunks[:3]:
                    run(x)  # warm-up
                start = time.perf_counter()
                for x in chunks:
                    run(x)
                result[f'{name}_batch{batch}'] = round(1e3 * (time.perf_counter() - start) / len(chunks), 3)
    return result


def table(result: dict) -> str:
    widths = result['widths']
    lines = [f"{'threshold':>9} {'top-1 %':>8} {'mean MACs':>12} {'of last':>8}  answered at " +
             ' / '.join(f'{w:g}' for w in widths)]
    full = result['macs'][widths[-1]]
    chosen = result['evaluation']['chosen']
    for row in result['evaluation']['sweep'] + [dict(chosen, chosen=True)]:
        mark = '  <- chosen on calibration' if row.get('chosen') else ''
        lines.append(f"{row['thresholds'][0]:>9.4f} {row['top1']:>8.2f} {row['mean_macs']:>12,d} "
                     f"{row['mean_macs'] / full:>8.1%}  " + ' / '.join(f'{a:.1%}' for a in row['answered']) + mark)
    return '\n'.join(lines)


def write(result: dict, static_rows: list[dict], output: Path) -> None:
    """cascade.json and accuracy_vs_macs_cascade.png (the cascade's sweep beside the static widths) in ``output``."""
    write_text_atomically(output / 'cascade.json', json.dumps(result, indent=2) + '\n')
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    rows = sorted(static_rows, key=lambda r: r['macs'])
    axes.plot([r['macs'] / 1e6 for r in rows], [r['top1'] for r in rows], marker='o', label='static widths')
    sweep = sorted(result['evaluation']['sweep'], key=lambda r: r['mean_macs'])
    axes.plot([r['mean_macs'] / 1e6 for r in sweep], [r['top1'] for r in sweep], marker='s',
              label=f"cascade {' -> '.join(f'{w:g}' for w in result['widths'])}")
    chosen = result['evaluation']['chosen']
    axes.scatter([chosen['mean_macs'] / 1e6], [chosen['top1']], s=120, facecolors='none', edgecolors='black',
                 label='chosen on calibration', zorder=3)
    axes.set_xlabel('mean MACs per image (millions)')
    axes.set_ylabel('top-1 accuracy (%)')
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = output / 'accuracy_vs_macs_cascade.png'
    write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=120, format='png'))
    plt.close(figure)
