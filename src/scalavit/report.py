"""Evaluation reports: results.csv, results.json, accuracy plots and the terminal table."""
import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from .files import write_atomically, write_text_atomically  # noqa: E402

COLUMNS = ['width', 'top1', 'top5', 'params', 'macs', 'latency_ms_median', 'latency_ms_p90', 'throughput_img_s']


def table(rows: list[dict], label: str = '') -> str:
    header = (f"{'run':<14}" if label else '') + (f"{'width':>7} {'top-1 %':>8} {'top-5 %':>8} {'params':>12} "
                                                  f"{'MACs':>14} {'lat. ms':>8} {'p90 ms':>8} {'img/s @64':>10}")
    lines = [header]
    for row in rows:
        lines.append((f"{row.get('run', label):<14}" if label else '') + (
            f"{row['width']:>7.4g} {row['top1']:>8.2f} {row['top5']:>8.2f} {row['params']:>12,d} {row['macs']:>14,d} "
            f"{row['latency_ms_median']:>8.2f} {row['latency_ms_p90']:>8.2f} {row['throughput_img_s']:>10.1f}"))
    return '\n'.join(lines)


def plot(runs: dict[str, list[dict]], x: str, path: Path, title: str) -> None:
    """Top-1 against ``x`` ('macs' or 'latency_ms_median'), one line per run."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for name, rows in runs.items():
        rows = sorted(rows, key=lambda r: r[x])
        values = [r[x] / 1e6 if x == 'macs' else r[x] for r in rows]
        axes.plot(values, [r['top1'] for r in rows], marker='o', label=name)
    axes.set_xlabel('MACs per image (millions)' if x == 'macs' else 'latency at batch 1 (ms, median)')
    axes.set_ylabel('top-1 accuracy (%)')
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=120, format=path.suffix[1:]))
    plt.close(figure)


def write_report(report: dict, output: Path, name: str) -> None:
    """results.csv, results.json, accuracy_vs_macs.png and accuracy_vs_latency.png in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + ['checkpoint'])
    writer.writeheader()
    writer.writerows(report['rows'])
    write_text_atomically(output / 'results.csv', buffer.getvalue())
    write_text_atomically(output / 'results.json', json.dumps(report, indent=2) + '\n')
    meta = report['meta']
    where = f"{meta['device_name']}, {meta['threads']} threads"
    plot({name: report['rows']}, 'macs', output / 'accuracy_vs_macs.png', f"{meta['model']} on {meta['data']}")
    plot({name: report['rows']}, 'latency_ms_median', output / 'accuracy_vs_latency.png', where)


def read_report(run: Path) -> dict:
    path = Path(run) / 'results.json' if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; evaluate the run first with `scalavit eval CHECKPOINT "
                                f"--output {Path(run)}`")
    return json.loads(path.read_text())
