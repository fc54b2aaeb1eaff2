"""Evaluate every width: top-1, top-5, parameters, MACs, latency and throughput.

A slimmable checkpoint is evaluated at every width of its grid; a family of separately trained checkpoints (one per
width) is evaluated as one set. The evaluation set is decoded once: each batch runs through every member.
"""
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import timm
import torch
from timm.data import resolve_data_config
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from tqdm import tqdm

from .checkpoint import (build_model_from_checkpoint, check_same_classes, load_checkpoint, load_model,
                         weights_digest)
from .compiled import CompiledWidths, check_can_compile, compile_widths
from .data import SkipUnreadable, build_eval_dataset, build_transform, collate_readable, describe
from .export import dense_state_dict
from .model import SlimmableVisionTransformer


def count_params(model: SlimmableVisionTransformer, width: Optional[float]) -> int:
    """Parameters the sub-network ``width`` uses (what its standalone export holds)."""
    return sum(t.numel() for t in dense_state_dict(model, width).values())


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's flop counter knows the CUDA attention kernels but not the CPU one, which would leave attention uncounted.
_UNCOUNTED_BY_TORCH = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.no_grad()
def count_macs(model: SlimmableVisionTransformer, width: Optional[float], input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates for one image at ``width``: ``torch.utils.flop_counter`` FLOPs / 2."""
    counter = FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_BY_TORCH)
    was_training = model.training
    model.eval()
    with counter:
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device), width)
    model.train(was_training)
    return counter.get_total_flops() // 2


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_alternately(fn_a: Callable[[], object], fn_b: Callable[[], object], calls: int,
                     warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and of ``fn_b``, called in turn (ABAB...) so that a noisy machine's drift hits
    both alike: how the benchmarks compare two implementations side by side."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(calls):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


@dataclass
class Member:
    """One network of the evaluated set: ``member(x)``, i.e. ``model(x, width)`` (or the compiled widths of the
    model, ``forward``), is the network of width ratio ``label``."""

    label: float
    model: SlimmableVisionTransformer
    width: Optional[float]
    checkpoint: str
    forward: Optional[CompiledWidths] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.forward or self.model)(x, self.width)


def compile_members(members: list[Member], cache_dir: Optional[Path] = None) -> None:
    """Compile each member's width (one ``compile_widths`` per model, holding all of its members' widths)."""
    for model in {id(m.model): m.model for m in members}.values():
        own = [m for m in members if m.model is model]
        compiled = compile_widths(model, [model.grid.largest if m.width is None else m.width for m in own], cache_dir)
        for member in own:
            member.forward = compiled


def load_members(paths: list[str], device: torch.device,
                 model_name: Optional[str] = None) -> tuple[list[Member], dict]:
    """Every width of one slimmable checkpoint, or one member per checkpoint of a separately trained family.

    An authors' checkpoint (a DeiT state dict, no training configuration) counts as a slimmable one.
    """
    if len(paths) == 1:
        model, config = load_model(paths[0], model_name)
        model = model.to(device).eval()
        if config.get('method') == 'separate':
            return [Member(config['width'], model, None, str(paths[0]))], config
        return [Member(w, model, w, str(paths[0])) for w in model.widths], config
    checkpoints = [load_checkpoint(path) for path in paths]
    configs = [c['config'] for c in checkpoints]
    for path, config in zip(paths[1:], configs[1:]):
        for key in ('data', 'model'):
            if config[key] != configs[0][key]:
                raise ValueError(f"{path} was trained with --{key} {config[key]}, {paths[0]} with {configs[0][key]}: "
                                 "a family must share its data and architecture")
    members = [Member(c['width'] if c['method'] == 'separate' else 1.0,
                      build_model_from_checkpoint(checkpoint, str(p)).to(device).eval(), None, str(p))
               for c, checkpoint, p in zip(configs, checkpoints, paths)]
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the checkpoints' widths {labels} repeat; give one checkpoint per width")
    return sorted(members, key=lambda m: m.label), configs[0]


@dataclass
class Scores:
    """Top-1 and top-5 (%) of every member over ``images`` scored images; ``skipped`` could not be decoded."""

    top1_top5: list[tuple[float, float]]
    images: int
    skipped: int


@torch.no_grad()
def accuracy(members: list[Member], loader: DataLoader, device: torch.device) -> Scores:
    """Each batch is decoded once and run through every member."""
    num_classes = members[0].model.num_classes
    k = min(5, num_classes)
    correct = np.zeros((len(members), 2))
    total = skipped = 0
    for images, targets, dropped in tqdm(loader, desc='evaluating', delay=2, leave=False):
        skipped += dropped
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        for i, member in enumerate(members):
            top = member(images).topk(k, dim=-1).indices
            hits = top == targets[:, None]
            correct[i] += (hits[:, 0].sum().item(), hits.any(dim=-1).sum().item())
        total += len(targets)
    if total == 0:
        raise ValueError(f"none of the {skipped} images of the evaluation set could be read")
    return Scores([(100 * top1 / total, 100 * top5 / total) for top1, top5 in correct], total, skipped)


def latency_ms(member: Member, input_size, device, repeats: int, batch_size: int = 1) -> tuple[float, float]:
    """Median and 90th percentile of a forward at ``batch_size`` (1: latency as a single request sees it)."""
    x = torch.randn(batch_size, *input_size, device=device)
    with torch.inference_mode():
        times = time_call(lambda: member(x), repeats)
    return median_ms(times), 1e3 * float(np.percentile(times, 90))


def throughput(member: Member, input_size, device, batch_size: int, repeats: int) -> float:
    """Images per second at ``batch_size`` (median of ``repeats`` calls)."""
    x = torch.randn(batch_size, *input_size, device=device)
    with torch.inference_mode():
        times = time_call(lambda: member(x), repeats, warmup=1)
    return batch_size / statistics.median(times)


def evaluation_set(model: SlimmableVisionTransformer, data: str):
    """The evaluation images of ``data`` ('fashion-mnist' or an image folder's val/) at the model's input size,
    mean and std, and their class names."""
    data_config = resolve_data_config(model=model)
    return build_eval_dataset(data, build_transform(data_config, False), data_config['input_size'][0])


def cpu_name() -> str:
    """The processor's model name where Linux tells it (platform.processor() only gives the architecture there)."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith('model name'):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()
    return dict(device=str(device), device_name=name, threads=torch.get_num_threads(), dtype='float32',
                torch=torch.__version__, timm=timm.__version__, python=platform.python_version())


def evaluate(paths: list[str], data: Optional[str] = None, device: str = 'cpu', batch_size: int = 256,
             workers: int = 1, latency_repeats: int = 50, throughput_batch: int = 64,
             throughput_repeats: int = 10, model_name: Optional[str] = None, compile: bool = False,
             compile_cache: Optional[Path] = None, log: Callable[[str], None] = print) -> dict:
    """The evaluation report of one slimmable checkpoint or one family: ``{'rows': [...], 'meta': {...}}``.
    ``compile``: every width measured (accuracy, latency, throughput) as compiled by ``compile_widths``."""
    device = torch.device(device)
    if compile:
        check_can_compile(device)
    members, config = load_members(paths, device, model_name)
    data = data or config.get('data')
    if data is None:
        raise ValueError(f"{paths[0]} does not say what it was trained on; name the evaluation data with --data")
    dataset, classes = evaluation_set(members[0].model, data)
    log(f"{data}: {len(classes)} classes; {describe('evaluation', dataset)}")
    if len(classes) != members[0].model.num_classes:
        raise ValueError(f"--data {data} has {len(classes)} classes, the checkpoint predicts "
                         f"{members[0].model.num_classes}")
    for member in members:
        check_same_classes(member.model.pretrained_cfg.get('label_names'), classes, member.checkpoint,
                           f"--data {data}")
    loader = DataLoader(SkipUnreadable(dataset), batch_size, num_workers=workers, collate_fn=collate_readable)
    input_size = members[0].model.pretrained_cfg['input_size']
    if compile:
        compile_members(members, compile_cache)
    scores = accuracy(members, loader, device)
    rows = []
    for member, (top1, top5) in zip(members, scores.top1_top5):
        median, p90 = latency_ms(member, input_size, device, latency_repeats)
        rows.append(dict(
            width=member.label, top1=round(top1, 2), top5=round(top5, 2),
            params=count_params(member.model, member.width), macs=count_macs(member.model, member.width, input_size),
            latency_ms_median=round(median, 3), latency_ms_p90=round(p90, 3),
            throughput_img_s=round(throughput(member, input_size, device, throughput_batch, throughput_repeats), 1),
            checkpoint=member.checkpoint))
    meta = dict(environment(device), method=config.get('method', 'scala'),
                model=config.get('model', members[0].model.pretrained_cfg['architecture']), data=data,
                images=scores.images, skipped_images=scores.skipped, checkpoints=list(map(str, paths)), latency_batch=1,
                throughput_batch=throughput_batch, compiled=compile, **measured_weights(members, config))
    return dict(rows=rows, meta=meta)


def measured_weights(members: list[Member], config: dict) -> dict:
    """Which weights a report measured: the checkpoint's step and a hash of its weights (one per member of a
    family), so that a report is never read as another checkpoint's."""
    models = list({id(m.model): m.model for m in members}.values())
    digests = [weights_digest(model.state_dict()) for model in models]
    return dict(step=config.get('step'), weights_sha256=digests[0] if len(digests) == 1 else digests)
