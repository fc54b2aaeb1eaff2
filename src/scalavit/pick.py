"""Choose the most accurate width that fits a budget of latency, MACs or parameters on this device."""
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import load_model, weights_digest
from .compiled import check_can_compile
from .evaluate import Member, compile_members, environment, evaluate, latency_ms
from .report import read_report, write_report

BUDGETS = {'latency_ms': 'latency_ms_median', 'macs': 'macs', 'params': 'params'}


def choose(rows: list[dict], key: str, budget: float) -> tuple[Optional[dict], dict]:
    """(the most accurate row whose ``key`` fits the budget or None, the cheapest row)."""
    fitting = [row for row in rows if row[key] <= budget]
    best = max(fitting, key=lambda row: (row['top1'], -row[key])) if fitting else None
    return best, min(rows, key=lambda row: row[key])


def saved_report(checkpoint: str, data: Optional[str], device: str, model_name: Optional[str],
                 repeats: int = 30, compile: bool = False, compile_cache: Optional[Path] = None,
                 weights: Optional[str] = None) -> dict:
    """``scalavit eval``'s report beside the checkpoint if it measured these weights (``weights``: their
    ``weights_digest``, computed here when not given); otherwise evaluate now, say why, and save it there."""
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        report = read_report(run)
    except FileNotFoundError:
        report = None
    if report is not None:
        if weights is None:
            weights = weights_digest(load_model(checkpoint, model_name)[0].state_dict())
        if report['meta'].get('weights_sha256') == weights:
            return report
        step = report['meta'].get('step')
        print(f"{run / 'results.json'} measured other weights than {checkpoint} ("
              f"{'step ' + str(step) if step is not None else 'an earlier version of the report, without a hash'}); "
              "evaluating again", flush=True)
    report = evaluate([checkpoint], data, device, latency_repeats=repeats, model_name=model_name,
                      compile=compile, compile_cache=compile_cache)
    write_report(report, run, run.name)
    return report


def rows_for(checkpoint: str, device: str, batch_size: int, data: Optional[str], model_name: Optional[str],
             repeats: int, compile: bool = False, compile_cache: Optional[Path] = None) -> tuple[list[dict], str]:
    """Accuracy and cost of every width: from the report ``scalavit eval`` saved beside the checkpoint when it was
    measured on this device with these threads (compiled or not, as asked), else evaluated now; latency re-measured
    here otherwise, and for batch sizes other than 1. Returns the rows and where their latencies come from."""
    here = dict(environment(torch.device(device)), compiled=compile)
    if compile:
        check_can_compile(torch.device(device))
    report = saved_report(checkpoint, data, device, model_name, repeats, compile, compile_cache)
    rows = [dict(row) for row in report['rows']]
    saved = dict(report['meta'], compiled=report['meta'].get('compiled', False))
    how = f"{here['device_name']}, {here['threads']} threads, {'compiled' if compile else 'eager'}"
    if batch_size == 1 and all(saved.get(k) == here[k] for k in ('device', 'device_name', 'threads', 'compiled')):
        return rows, f"measured by `scalavit eval` on {how}, batch 1"
    model, _ = load_model(checkpoint, model_name)
    model = model.to(device).eval()
    input_size = model.pretrained_cfg['input_size']
    members = [Member(row['width'], model, row['width'], checkpoint) for row in rows]
    if compile:
        compile_members(members, compile_cache)
    for row, member in zip(rows, members):
        row['latency_ms_median'] = latency_ms(member, input_size, torch.device(device), repeats, batch_size)[0]
    return rows, f"measured now on {how}, batch {batch_size}"
