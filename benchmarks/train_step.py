"""Cost of one Scala training step, measured side by side in one run.

Time: one Scala step (four sub-networks' forward and backward into one AdamW step) against its four sub-networks
trained alone as dense timm models of the same widths (each its own forward, backward and AdamW step), summed.
Calls alternate between the two so that the machine's drift hits both alike; figures are medians. Target: <= 1.10.

Memory: the peak of a Scala step against a full-width step (target <= 1.15x). On CUDA the allocator's peak; on the
CPU each kind of step runs in a fresh process and the figure is its peak resident memory above what it held once the
model and optimizer were built.

    python benchmarks/train_step.py                               # DeiT-S, batch 16
    python benchmarks/train_step.py --model scala_vit_mini_patch7_28 --batch-size 128
    python benchmarks/train_step.py --compiled                    # the Scala step compiled against eager

``--compiled``: the same Scala step with the model compiled as ``scalavit train --compile`` compiles it, against the
eager step, alternately (target: no slower); and the peak memory of each, each in a fresh process (target <= 1.15x).

Inductor's options come from its environment variables, so one of them is tried on the step with, for example,
``TORCHINDUCTOR_CPP_WRAPPER=1 python benchmarks/train_step.py --compiled --time-only``.

``--profile``: where the eager step's time goes (torch.profiler): the share in matrix products, attention and
convolution kernels, which no compiler removes, against everything else (element-wise work, copies, the
framework's per-operation cost), the floor of what ``--compile`` can gain on this machine.

    python benchmarks/train_step.py --profile --model scala_vit_mini_distilled_patch7_28 --batch-size 128
"""
import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

import timm
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

import scalavit  # noqa: F401  (registers the scala_* models)
from scalavit import to_timm
from scalavit.compiled_training import compile_for_training
from scalavit.evaluate import time_alternately
from scalavit.methods import Scala
from scalavit.train import SubNetworkPasses


def make_batch(model, batch_size, device):
    images = torch.randn(batch_size, *model.pretrained_cfg['input_size'], device=device)
    target = mixup_target(torch.randint(0, model.num_classes, (batch_size,), device=device), model.num_classes,
                          smoothing=0.1)
    return images, target


def scala_step_fn(model, images, target, seed, autocast=contextlib.nullcontext):
    """One Scala step whose width generator restarts from ``seed``: every call trains the same four networks."""
    method = Scala(model.grid, full_warmup_epochs=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator()

    def step():
        optimizer.zero_grad(set_to_none=True)
        generator.manual_seed(seed)
        method.step(SubNetworkPasses(model, images, autocast, torch.amp.GradScaler('cuda', enabled=False)),
                    target, 0, generator)
        optimizer.step()
    return step


def dense_steps_fn(dense_models, images, target):
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in dense_models]

    def step():
        for dense, optimizer in zip(dense_models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(dense(images), target).backward()
            optimizer.step()
    return step


def full_step_fn(model, images, target):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), target).backward()
        optimizer.step()
    return step


def peak_memory_mib(args, kind):
    """Peak memory of 3 steps of ``kind`` ('scala', 'full' or 'compiled') above the memory held before the first
    step."""
    if args.device.startswith('cuda'):
        model, step = build_step(args, kind)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    command = [sys.executable, __file__, '--model', args.model, '--batch-size', str(args.batch_size),
               '--seed', str(args.seed), '--memory-of', kind, *(['--regional'] if args.regional else [])]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)['peak_mib']


def build_step(args, kind):
    torch.manual_seed(0)
    model = timm.create_model(args.model).to(args.device).train()
    images, target = make_batch(model, args.batch_size, args.device)
    if kind == 'compiled':
        return model, scala_step_fn(compiled_model(model, images, args.seed, args.regional), images, target,
                                    args.seed)
    if kind == 'scala':
        return model, scala_step_fn(model, images, target, args.seed)
    return model, full_step_fn(model, images, target)


def step_widths(model, seed):
    upper, lower = model.grid.sample(torch.Generator().manual_seed(seed))
    return [model.grid.largest, upper, lower, model.grid.smallest]


def compiled_model(model, images, seed, regional=False):
    """The model as ``scalavit train --compile [--compile-regional]`` compiles it, warmed up at the widths the step
    trains."""
    return compile_for_training(model, tuple(step_widths(model, seed)), images, contextlib.nullcontext,
                                regional=regional)


def rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def report_own_peak(args):
    """In a fresh process: peak resident memory of 3 steps of one kind, above what was held before them (the
    high-water mark reset first, so that what building and compiling took does not count)."""
    _, step = build_step(args, args.memory_of)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM (Linux)
    before = rss_mib()
    for _ in range(3):
        step()
    with open('/proc/self/status') as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith('VmHWM')) / 1024
    print(json.dumps(dict(peak_mib=peak - before)))


KERNELS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::mkldnn_convolution',
           'aten::convolution_backward', 'aten::_scaled_dot_product_flash_attention_for_cpu',
           'aten::_scaled_dot_product_flash_attention_for_cpu_backward',
           'aten::_scaled_dot_product_flash_attention', 'aten::_scaled_dot_product_flash_attention_backward')


def profile_step(args):
    from torch.profiler import ProfilerActivity, profile

    model, step = build_step(args, 'scala')
    for _ in range(2):
        step()
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    eager_time = statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.calls):
            step()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    kernels = sum(e.self_cpu_time_total for e in events if e.key in KERNELS)
    print(f"{args.model}, batch {args.batch_size}, {args.device}, fp32, {torch.get_num_threads()} threads, "
          f"widths {step_widths(model, args.seed)}")
    print(f"Scala step (eager): {1e3 * eager_time:.1f} ms, {args.batch_size / eager_time:.0f} img/s")
    print(f"matrix products, attention and convolution kernels: {kernels / total:.1%} of the step's CPU time; "
          f"the rest: {1 - kernels / total:.1%}")
    print(f"a compiled step that removed all the rest would take {kernels / total:.2f}x the eager step")
    print(events.table(sort_by='self_cpu_time_total', row_limit=12))


def compare_compiled(args):
    model, eager_step = build_step(args, 'scala')
    images, target = make_batch(model, args.batch_size, args.device)
    start = time.perf_counter()
    compiled = timm.create_model(args.model).to(args.device).train()
    compiled.load_state_dict(model.state_dict())
    compiled_step = scala_step_fn(compiled_model(compiled, images, args.seed, args.regional), images, target,
                                  args.seed)
    compile_s = time.perf_counter() - start
    compiled_time, eager_time = time_alternately(compiled_step, eager_step, args.calls, warmup=1)
    kind = 'compiled block by block' if args.regional else 'compiled'
    print(f"{args.model}, batch {args.batch_size}, {args.device}, fp32, {torch.get_num_threads()} threads, "
          f"widths {step_widths(model, args.seed)}; compiling them took {compile_s:.0f} s")
    print(f"{'Scala step':32} {'ms':>10}")
    print(f"{'eager':32} {1e3 * eager_time:>10.1f}")
    print(f"{kind:32} {1e3 * compiled_time:>10.1f}")
    print(f"time ratio compiled / eager: {compiled_time / eager_time:.3f}   (target <= 1.0)")
    if args.time_only:
        return
    compiled_peak, eager_peak = peak_memory_mib(args, 'compiled'), peak_memory_mib(args, 'scala')
    print(f"peak memory above the model, MiB: compiled {compiled_peak:.1f}, eager {eager_peak:.1f}; ratio "
          f"{compiled_peak / eager_peak:.3f}   (target <= 1.15)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='scala_deit_small_patch16_224')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--seed', type=int, default=0, help='seeds the Stable Sampling draw of the two middle widths')
    parser.add_argument('--calls', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compiled', action='store_true', help='compiled Scala step against the eager one')
    parser.add_argument('--profile', action='store_true', help="where the eager Scala step's time goes")
    parser.add_argument('--time-only', action='store_true', help='skip the memory comparison (--compiled)')
    parser.add_argument('--regional', action='store_true', help='--compiled: each block compiled, as '
                                                                '`scalavit train --compile --compile-regional`')
    parser.add_argument('--memory-of', choices=['scala', 'full', 'compiled'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return report_own_peak(args)
    if args.compiled:
        return compare_compiled(args)
    if args.profile:
        return profile_step(args)

    model, scala_step = build_step(args, 'scala')
    upper, lower = model.grid.sample(torch.Generator().manual_seed(args.seed))
    widths = [model.grid.largest, upper, lower, model.grid.smallest]
    images, target = make_batch(model, args.batch_size, args.device)
    dense_models = [to_timm(model, w).to(args.device).train() for w in widths]
    dense_step = dense_steps_fn(dense_models, images, target)
    scala_time, dense_time = time_alternately(scala_step, dense_step, args.calls, warmup=1)
    print(f"{args.model}, batch {args.batch_size}, {args.device}, fp32, {torch.get_num_threads()} threads, "
          f"widths {widths}")
    print(f"{'':32} {'ms':>10}")
    print(f"{'Scala step (4 passes, 1 AdamW)':32} {1e3 * scala_time:>10.1f}")
    print(f"{'4 dense timm steps, summed':32} {1e3 * dense_time:>10.1f}")
    print(f"time ratio Scala / dense sum: {scala_time / dense_time:.3f}   (target <= 1.10)")
    scala_peak, full_peak = peak_memory_mib(args, 'scala'), peak_memory_mib(args, 'full')
    print(f"\n{'peak memory above the model':32} {'MiB':>10}")
    print(f"{'Scala step':32} {scala_peak:>10.1f}")
    print(f"{'full-width step':32} {full_peak:>10.1f}")
    print(f"memory ratio Scala / full width: {scala_peak / full_peak:.3f}   (target <= 1.15)")


if __name__ == '__main__':
    main()
