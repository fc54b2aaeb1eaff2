"""Choose the most accurate width that fits a budget of latency, MACs or parameters on this device; for a MACs
budget, a cascade's thresholds too (from `scalavit eval --cascade`)."""
import json
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


def cascade_beside(checkpoint: str) -> tuple[Optional[dict], str]:
    """The cascade.json beside the checkpoint if it measured the same weights as its results.json, or None and why
    not (called once ``saved_report`` has made results.json that of the checkpoint's weights)."""
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        cascade = json.loads((run / 'cascade.json').read_text())
    except FileNotFoundError:
        return None, f"no cascade.json in {run} (`scalavit eval {checkpoint} --cascade 0.25,1.0` measures one)"
    if cascade.get('weights_sha256') != read_report(run)['meta'].get('weights_sha256') or (
            'sweep' not in cascade.get('calibration', {})):
        return None, (f"{run / 'cascade.json'} measured other weights or is of an earlier version; "
                      f"`scalavit eval {checkpoint} --cascade ...` measures it again")
    return cascade, ''


def cascade_within(cascade: dict, macs: float) -> Optional[dict]:
    """The cascade's thresholds for a MACs budget: of those whose mean MACs fit on the calibration images and on the
    evaluation set, the most accurate on the calibration images (never chosen on the evaluation set); its score on
    the evaluation set, or None."""
    pairs = [(chosen_on, measured) for chosen_on, measured in zip(cascade['calibration']['sweep'],
                                                                  cascade['evaluation']['sweep'])
             if chosen_on['mean_macs'] <= macs and measured['mean_macs'] <= macs]
    if not pairs:
        return None
    return max(pairs, key=lambda pair: (pair[0]['top1'], -pair[0]['mean_macs']))[1]


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
