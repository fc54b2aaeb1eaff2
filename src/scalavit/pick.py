"""Choose the most accurate width that fits a budget of latency, MACs or parameters on this device."""
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import load_model
from .evaluate import Member, environment, evaluate, latency_ms
from .report import read_report, write_report

BUDGETS = {'latency_ms': 'latency_ms_median', 'macs': 'macs', 'params': 'params'}


def choose(rows: list[dict], key: str, budget: float) -> tuple[Optional[dict], dict]:
    """(the most accurate row whose ``key`` fits the budget or None, the cheapest row)."""
    fitting = [row for row in rows if row[key] <= budget]
    best = max(fitting, key=lambda row: (row['top1'], -row[key])) if fitting else None
    return best, min(rows, key=lambda row: row[key])


def saved_report(checkpoint: str, data: Optional[str], device: str, model_name: Optional[str],
                 repeats: int = 30) -> dict:
    """``scalavit eval``'s report beside the checkpoint; when there is none, evaluate now and save it there."""
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        return read_report(run)
    except FileNotFoundError:
        report = evaluate([checkpoint], data, device, latency_repeats=repeats, model_name=model_name)
        write_report(report, run, run.name)
        return report


def rows_for(checkpoint: str, device: str, batch_size: int, data: Optional[str], model_name: Optional[str],
             repeats: int) -> tuple[list[dict], str]:
    """Accuracy and cost of every width: from the report ``scalavit eval`` saved beside the checkpoint when it was
    measured on this device with these threads, else evaluated now; latency re-measured here for batch sizes other
    than 1. Returns the rows and where their latencies come from."""
    here = environment(torch.device(device))
    report = saved_report(checkpoint, data, device, model_name, repeats)
    rows = [dict(row) for row in report['rows']]
    saved = report['meta']
    if batch_size == 1 and all(saved.get(k) == here[k] for k in ('device', 'device_name', 'threads')):
        return rows, f"measured by `scalavit eval` on {here['device_name']}, {here['threads']} threads, batch 1"
    model, _ = load_model(checkpoint, model_name)
    model = model.to(device).eval()
    input_size = model.pretrained_cfg['input_size']
    for row in rows:
        member = Member(row['width'], model, row['width'], checkpoint)
        row['latency_ms_median'] = latency_ms(member, input_size, torch.device(device), repeats, batch_size)[0]
    return rows, f"measured now on {here['device_name']}, {here['threads']} threads, batch {batch_size}"
