"""``scalavit <command>``: the command-line interface."""
import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

import timm
import torch

from .cascade import cascade_widths
from .checkpoint import load_model, trusted_checkpoints
from .compiled import CompileError
from .config import TrainConfig, option_kind, parse_number, read_config_file
from .evaluate import count_macs, count_params, evaluate, evaluation_set, median_ms, time_call
from .export import FORMATS, check_names_a_folder, export_width
from .files import check_writable_directory
from .model import FASHION_MODEL, check_device, check_slimmable_model_name
from .pick import BUDGETS, cascade_beside, cascade_within, choose, rows_for
from .report import plot, read_report, table, write_report
from .rundir import resumed_config, run_directory
from .train import train

_HELP = {
    'method': 'scala, usnet (US-Net baseline) or separate (one ordinary model of --width)',
    'model': 'a scala_* timm model name',
    'data': "'fashion-mnist', a folder of its four *-ubyte.gz files, or an image folder with train/ and val/",
    'output': 'run directory: config.json, log.jsonl, log.csv, last.pt, best.pt',
    'max_steps': 'stop after this many optimizer steps (smoke runs)', 'batch_size': 'images per process and step',
    'teacher': 'full-width checkpoint (e.g. from --method separate --width 1.0) for hard distillation',
    'granularity': 'step between widths, e.g. 1/16', 'width': 'separate: the width ratio of the model',
    'isolated_activation': 'Isolated Activation (--no-isolated-activation: the ablation)',
    'transfer': 'progressive (l -> m_hi -> m_lo -> s) or full (the full width teaches all)',
    'sampling': 'stable (Stable Sampling) or uniform', 'noise_calibration': 'ground-truth CE for the smaller widths',
    'full_warmup_epochs': 'first epochs train only the full width, at half the learning rate',
    'always_smallest': 'train the smallest width at every step (--no-always-smallest: drawn like the others)',
    'grad_stats': "every N steps, each sub-network's gradient norm and the cosines between them (grad_stats.jsonl)",
    'amp': 'none, fp16 or bf16 (CUDA only)',
    'compile': 'torch.compile forward and backward, one graph per width, compiled before the first step',
    'compile_mode': "torch.compile's mode: default, or reduce-overhead (CUDA graphs; CUDA, one process)",
    'compile_regional': 'compile each transformer block instead of the whole model: several times less compilation',
    'eval_widths': 'widths evaluated after each epoch (all after the last)',
    'auto_augment': "timm RandAugment string, or 'none'", 'clip_grad': 'clip the gradient norm to this value',
    'init': "start from these weights: a scalavit run or checkpoint, a .pth, a .safetensors file or local-dir:FOLDER "
            "(classes, image size, input channels and distillation adapted, each said in one line)",
    'freeze_backbone': 'train only the classifier(s), at every width (the linear probe)',
    'layer_decay': "timm's layer-wise learning-rate decay, e.g. 0.75",
}


def _number(text: str) -> float:
    """A float or a fraction such as 1/16."""
    try:
        return parse_number(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as 1/16")


def _widths_list(text: str) -> list[float]:
    """Widths such as 0.25,1.0 (fractions such as 1/4 work)."""
    return [_number(part) for part in text.split(',') if part.strip()]


_SUFFIXES = {'K': 1e3, 'M': 1e6, 'G': 1e9}


def _amount(text: str) -> float:
    """A count such as 3M, 1.5G or 250000 (K, M, G: thousands, millions, billions)."""
    factor = _SUFFIXES.get(text[-1:].upper(), 1)
    try:
        return float(text[:-1] if factor != 1 else text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number such as 3M, 1.5G or 250000") from None


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; options left out keep the --config file's value, then the default."""
    for field in dataclasses.fields(TrainConfig):
        flag, (kind, _) = '--' + field.name.replace('_', '-'), option_kind(field)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"{_HELP.get(field.name, '')} (default: {default})".strip()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) in (tuple, list):
            nargs = 2 if typing.get_origin(kind) is tuple else '+'
            parser.add_argument(flag, type=_number, nargs=nargs, help=help_text)
        else:
            parser.add_argument(flag, type=_number if kind is float else kind, help=help_text)
    parser.add_argument('--config', type=Path, help='YAML file whose keys set the options above (the command line wins)')
    parser.add_argument('--resume', help='continue the run in this directory (or from this last.pt)')


def _add_trust_option(parser: argparse.ArgumentParser, files: str) -> None:
    parser.add_argument('--trust-checkpoint', action='store_true', default=False,
                        help=f'load {files} even where that means unpickling Python objects, which can run any code: '
                             'only for files you trust (by default only tensors and plain data are loaded)')


def _add_compile_options(parser: argparse.ArgumentParser, serving: bool = False) -> None:
    cpu = ("torch.compile with inductor's C++ wrapper, which releases the GIL" if serving
           else 'torch.export + AOTInductor packages')
    parser.add_argument('--compile', action='store_true',
                        help=f'run every width compiled, one graph per width, compiled once, then cached: on the CPU '
                             f'{cpu}; on CUDA torch.compile replayed as CUDA graphs')
    parser.add_argument('--compile-cache', type=Path,
                        help='folder of the compiled widths (default $SCALAVIT_CACHE_DIR or ~/.cache/scalavit/compiled)')


def _train(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items()
               if k not in ('command', 'run', 'config', 'resume', 'trust_checkpoint')}
    values = {}
    if args.resume:
        values = resumed_config(args.resume)
        values['output'] = str(run_directory(args.resume))
    if args.config:
        values.update(read_config_file(args.config))
    values.update(options)
    config = TrainConfig(**values)
    row = train(config, resume=args.resume)
    if int(os.environ.get('RANK', '0')) > 0:
        return  # under torchrun, rank 0 speaks for the run
    if not row:
        print("nothing to train: the run has already reached --epochs")
        return
    print(f"\ntest top-1 after epoch {row['epoch']} (step {row['step']}):")
    for key, value in row.items():
        if key.startswith('top1@'):
            print(f"  width {key[5:]:>7}  {value:6.2f}%")
    print(f"checkpoints and logs in {config.output}")


def _widths(args: argparse.Namespace) -> None:
    """Print every width of a (randomly initialised) model: channels, parameters, MACs and batch-1 latency."""
    check_slimmable_model_name(args.model)
    torch.manual_seed(0)
    model = timm.create_model(args.model, smallest=args.smallest, largest=args.largest,
                              granularity=args.granularity).eval()
    input_size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *input_size)
    print(f"{args.model}: grid {list(model.widths)}, {torch.get_num_threads()} threads, batch 1, fp32")
    print(f"{'width':>7} {'channels':>9} {'side':>5} {'params':>11} {'MACs':>13} {'latency ms':>11}")
    with torch.inference_mode():
        for width in model.widths:
            channels = model.channels(width)
            side = 'last' if channels.embed[0] > 0 else 'first'
            latency = median_ms(time_call(lambda: model(x, width), repeats=args.repeats))
            print(f"{width:>7.4f} {channels.dim:>9d} {side:>5} {count_params(model, width):>11,d} "
                  f"{count_macs(model, width, input_size):>13,d} {latency:>11.2f}")


def _eval(args: argparse.Namespace) -> None:
    if args.output is None:
        if len(args.checkpoints) > 1:
            raise ValueError("a family of checkpoints needs --output DIR for its report")
        first = Path(args.checkpoints[0])
        args.output = first if first.is_dir() else first.parent
    check_writable_directory(args.output, '--output')
    check_device(args.device)
    if args.cascade and len(args.checkpoints) > 1:
        raise ValueError("--cascade runs the widths of one slimmable checkpoint; give one")
    report = evaluate(args.checkpoints, args.data, args.device, args.batch_size, args.workers, args.latency_repeats,
                      model_name=args.model, compile=args.compile, compile_cache=args.compile_cache)
    write_report(report, args.output, args.output.name)
    meta = report['meta']
    skipped = f" ({meta['skipped_images']} unreadable, skipped)" if meta.get('skipped_images') else ''
    print(f"{meta['model']} ({meta['method']}) on {meta['data']}, {meta['images']} images scored{skipped}; "
          f"latency at batch 1 and throughput at batch {meta['throughput_batch']} on {meta['device_name']}, "
          f"{meta['threads']} threads, fp32, {'compiled' if meta['compiled'] else 'eager'}")
    print(table(report['rows']))
    print(f"results.csv, results.json, accuracy_vs_macs.png, accuracy_vs_latency.png in {args.output}")
    if args.cascade:
        _eval_cascade(args, report['rows'])


def _eval_cascade(args: argparse.Namespace, static_rows: list[dict]) -> None:
    from . import cascade_report

    result = cascade_report.evaluate_cascade(
        args.checkpoints[0], args.cascade, args.data, args.device, args.batch_size, args.workers,
        args.cascade_within, args.calibration, args.confidence, args.model)
    cascade_report.write(result, static_rows, args.output)
    print(cascade_report.table(result))
    latency, chosen = result['latency_ms'], result['evaluation']['chosen']
    print(f"chosen thresholds {', '.join(f'{t:.4f}' for t in chosen['thresholds'])}: top-1 {chosen['top1']:.2f}% at "
          f"{chosen['mean_macs'] / result['macs'][result['widths'][-1]]:.1%} of width {result['widths'][-1]:g}'s MACs; "
          f"mean latency {latency['cascade_batch1'] / latency['last_width_batch1']:.2f}x its own at batch 1, "
          f"{latency['cascade_batch64'] / latency['last_width_batch64']:.2f}x at batch 64")
    print(f"cascade.json, accuracy_vs_macs_cascade.png in {args.output}")


def _compare(args: argparse.Namespace) -> None:
    runs = {Path(run).name: read_report(run)['rows'] for run in args.runs}
    if len(runs) != len(args.runs):
        raise ValueError("two runs share a directory name; give runs whose directories are named apart")
    check_writable_directory(args.output, '--output')
    plot(runs, 'macs', args.output / 'accuracy_vs_macs.png', 'top-1 against MACs')
    plot(runs, 'latency_ms_median', args.output / 'accuracy_vs_latency.png', 'top-1 against batch-1 latency')
    print(table([dict(row, run=name) for name, rows in runs.items() for row in rows], label='run'))
    print(f"accuracy_vs_macs.png, accuracy_vs_latency.png in {args.output}")


def _export(args: argparse.Namespace) -> None:
    check_names_a_folder(args.output, args.format)
    model, config = load_model(args.checkpoint, args.model)
    inputs = _sample_images(model, args.data or config.get('data'), args.images) if (args.data or config) else None
    check = export_width(model, args.width, args.output, args.format, args.force, inputs,
                         checkpoint=args.checkpoint)
    source = f"{check['images']} {'images of ' + (args.data or config['data']) if inputs is not None else 'random inputs'}"
    print(f"width {check['width']:g} of {args.checkpoint} written to {args.output} ({args.format})")
    print(f"checked on {source}: max |logit difference| {check['max_abs_logit_difference']:.2e}, "
          f"top-1 agreement {100 * check['top1_agreement']:.2f}%")
    if check['norm_eps'] != check['exported_norm_eps']:
        print(f"note: the model was trained with LayerNorm eps {check['norm_eps']:g}; timm's config carries "
              f"{check['exported_norm_eps']:g}, so the export is close but not bit-exact (figures above)")


def _sample_images(model, data: str, count: int) -> torch.Tensor:
    """``count`` images spread evenly over the evaluation set."""
    dataset, _ = evaluation_set(model, data)
    indices = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).long().tolist()
    return torch.stack([dataset[i][0] for i in indices])


def _pick(args: argparse.Namespace) -> None:
    budget_name, budget = next((name, getattr(args, name)) for name in BUDGETS if getattr(args, name) is not None)
    key = BUDGETS[budget_name]
    check_device(args.device)
    rows, source = rows_for(args.checkpoint, args.device, args.batch, args.data, args.model, args.repeats,
                            args.compile, args.compile_cache)
    best, cheapest = choose(rows, key, budget)
    cascade, about_cascade = _pick_cascade(args.checkpoint, budget) if budget_name == 'macs' else (None, None)
    if cascade is not None and best is not None and cascade['top1'] <= best['top1']:
        cascade = None
    unit = {'latency_ms': ' ms', 'macs': ' MACs', 'params': ' parameters'}[budget_name]
    print(f"budget: {key} <= {budget:,g}{unit}; latencies {source}")
    cost = (lambda v: f"{v:,.3f}") if budget_name == 'latency_ms' else (lambda v: f"{int(v):,d}")
    print(f"{'width':>7} {'top-1 %':>8} {key:>18} {'fits':>5}")
    for row in rows:
        mark = '  <- chosen' if row is best and cascade is None else ''
        fits = 'yes' if row[key] <= budget else 'no'
        print(f"{row['width']:>7.4g} {row['top1']:>8.2f} {cost(row[key]):>18} {fits:>5}{mark}")
    if about_cascade:
        print(about_cascade)
    if cascade is not None:
        print(f"cascade {' -> '.join(f'{w:g}' for w in cascade['widths'])} at threshold "
              f"{cascade['thresholds'][0]:.4f}: more accurate than any width within the budget (top-1 "
              f"{cascade['top1']:.2f}%, mean MACs {cost(cascade['mean_macs'])}; answered at each stage "
              f"{' / '.join(f'{a:.1%}' for a in cascade['answered'])})")
        return
    if best is None:
        raise ValueError(f"no width fits {key} <= {budget:,g}{unit}; the cheapest is width {cheapest['width']:g} "
                         f"at {cost(cheapest[key])}")
    print(f"width {best['width']:g}: the most accurate width within the budget (top-1 {best['top1']:.2f}%, "
          f"{key} {cost(best[key])})")


def _pick_cascade(checkpoint: str, macs: float) -> tuple[dict | None, str]:
    """The cascade of `scalavit eval --cascade` with its thresholds for the budget, or None; and a line saying what
    was found."""
    saved, why_not = cascade_beside(checkpoint)
    if saved is None:
        return None, f"cascades: {why_not}"
    name = ' -> '.join(f'{w:g}' for w in saved['widths'])
    chosen = cascade_within(saved, macs)
    if chosen is None:
        return None, f"cascade {name}: no thresholds fit the budget"
    return dict(chosen, widths=saved['widths']), (
        f"cascade {name}: threshold {chosen['thresholds'][0]:.4f} chosen on the calibration images, top-1 "
        f"{chosen['top1']:.2f}% at {int(chosen['mean_macs']):,d} mean MACs")


def _serve(args: argparse.Namespace) -> None:
    import logging

    from .serve.app import create_app
    from .serve.runner import Runner
    from .serve.server import Limits, serve
    from .serve.service import Service, Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(args.slo_ms, args.policy, args.max_batch_size, args.max_queue, args.max_body_bytes,
                        args.profile_repeats, args.max_pixels, args.decode_threads,
                        served_model_name=args.served_model_name, profile_cache=args.profile_cache,
                        use_profile_cache=args.use_profile_cache, switch_interval_ms=args.switch_interval_ms)
    limits = Limits(args.header_timeout, args.body_timeout, args.keep_alive_timeout, args.max_header_bytes,
                    args.max_headers, args.max_connections, args.drain_timeout)
    if args.compile and args.onnxruntime:
        raise ValueError("--compile and --onnxruntime are two backends; choose one")
    backend = 'compiled' if args.compile else 'onnxruntime' if args.onnxruntime else 'eager'
    scaling = {name: value for name in ('replicas', 'min_replicas', 'max_replicas')
               if (value := getattr(args, name)) is not None}
    if args.cascade and args.policy != 'slackfit':
        raise ValueError(f"--cascade is one more choice for the slackfit policy; --policy {args.policy} never "
                         "chooses it")
    if scaling:
        if args.cascade:
            raise ValueError("--cascade is served by the plain server for now; leave out --replicas, "
                             "--min-replicas and --max-replicas")
        _serve_on_ray(args, settings, backend, scaling)
        return
    runner = Runner(args.checkpoint, args.device, args.model, backend=backend, compile_cache=args.compile_cache,
                    confidence=args.confidence)
    if args.cascade:
        cascade_widths(runner.model.grid, args.cascade)  # before anything is evaluated or written
    accuracies = runner.accuracies(args.data)
    cascade = args.cascade and runner.cascade_plan(args.cascade, args.data, args.cascade_within, args.calibration)
    service = Service(runner, settings, accuracies, cascade=cascade or None)
    logging.basicConfig(format='scalavit serve: %(message)s', level=logging.INFO)
    print(f"scalavit serve: {args.checkpoint} on http://{args.host}:{args.port}, policy {service.policy.name}, "
          f"SLO {args.slo_ms:g} ms, {torch.get_num_threads()} threads, {backend}; profiling {len(runner.widths)} "
          f"widths x {len(settings.batch_sizes)} batch sizes, or checking the cached profile (ready when "
          f"/health/ready answers 200)", flush=True)
    if cascade:
        print(f"scalavit serve: {cascade.name} (thresholds {', '.join(f'{t:.4f}' for t in cascade.thresholds)}, "
              f"top-1 {cascade.accuracy:.2f}%, {cascade.reach[1]:.1%} of requests going on to width "
              f"{cascade.widths[1]:g}) is one more choice", flush=True)
    serve(create_app(service, limits.drain_timeout_s), args.host, args.port, limits)


def _serve_on_ray(args: argparse.Namespace, settings, backend: str, scaling: dict[str, int]) -> None:
    """The same server as replicas of a Ray Serve deployment on a local Ray instance (``scalavit.serve.ray``)."""
    try:
        from .serve.ray import run_local
    except ImportError:
        raise ValueError("--replicas runs on Ray Serve, which is not installed: pip install 'scalavit[ray]'") from None
    if min(scaling.values()) < 0 or scaling.get('replicas', 1) < 1 or scaling.get('max_replicas', 1) < 1:
        raise ValueError(f"replicas must be at least 1 (--min-replicas at least 0), got {scaling}")
    options = dict(checkpoint=args.checkpoint, **dataclasses.asdict(settings), **scaling, device=args.device,
                   model=args.model, backend=backend, compile_cache=args.compile_cache, data=args.data,
                   threads=args.threads, drain_timeout=args.drain_timeout, trust_checkpoint=args.trust_checkpoint)
    run_local(options, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='scalavit', description='Train one slimmable Vision Transformer (Scala) and serve any of its widths.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    widths = commands.add_parser('widths', help="show a model's width grid: channels, parameters, MACs, latency")
    widths.add_argument('--model', default=FASHION_MODEL, help=f'a scala_* model name (default {FASHION_MODEL})')
    widths.add_argument('--smallest', type=float, default=0.25, help='the narrowest width ratio (default 0.25)')
    widths.add_argument('--largest', type=float, default=1.0, help='the widest width ratio (default 1.0)')
    widths.add_argument('--granularity', type=_number, default=1 / 16, help='step between widths, e.g. 1/16')
    widths.add_argument('--repeats', type=int, default=20, help='timed batch-1 calls per width')
    widths.set_defaults(run=_widths)

    training = commands.add_parser(
        'train', help='train a slimmable ViT with Scala, US-Net or Separate Training',
        description='Train with Scala (default), the US-Net baseline or Separate Training. With no options: the '
                    'built-in default, Scala on Fashion-MNIST.', argument_default=argparse.SUPPRESS)
    _add_train_options(training)
    _add_trust_option(training, '--init, --teacher and --resume files')
    training.set_defaults(run=_train, config=None, resume=None)

    evaluation = commands.add_parser(
        'eval', help='evaluate every width: top-1/5, parameters, MACs, latency, throughput',
        description='Evaluate every width of a checkpoint, or a family of separately trained checkpoints as one set.')
    evaluation.add_argument('checkpoints', nargs='+', help="last.pt / best.pt files or run directories")
    evaluation.add_argument('--data', help="default: the data the checkpoint was trained on")
    evaluation.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    evaluation.add_argument('--output', type=Path, help="report directory (default: the checkpoint's run directory)")
    evaluation.add_argument('--batch-size', type=int, default=256)
    evaluation.add_argument('--workers', type=int, default=1)
    evaluation.add_argument('--latency-repeats', type=int, default=50, help='timed batch-1 calls per width')
    evaluation.add_argument('--model', help="architecture of an authors' checkpoint when its shapes do not tell it")
    _add_compile_options(evaluation)
    _add_trust_option(evaluation, 'the checkpoints')
    _add_cascade_options(evaluation, 'cascades: an image answered at the first width sure enough of it')
    evaluation.set_defaults(run=_eval)

    compare = commands.add_parser('compare', help='draw several evaluated runs on one plot and one table')
    compare.add_argument('runs', nargs='+', type=Path, help='directories holding results.json')
    compare.add_argument('--output', type=Path, default=Path('runs/compare'))
    compare.set_defaults(run=_compare)

    export = commands.add_parser(
        'export', help='write one width as a standalone timm model (safetensors), ONNX, a torch.export program '
                       '(pt2), an AOTInductor package (aoti) or TorchScript (deprecated)',
        description="Write width r as a plain timm VisionTransformer that timm.create_model('local-dir:DIR', "
                    "pretrained=True) rebuilds without scalavit, or as ONNX, a torch.export program (model.pt2), an "
                    "AOTInductor package (model_aoti.pt2) or TorchScript (deprecated by PyTorch); then check it.")
    export.add_argument('checkpoint', help='a scalavit checkpoint or run directory, or an authors\' .pth')
    export.add_argument('--width', type=_number, required=True)
    export.add_argument('--output', type=Path, required=True)
    export.add_argument('--format', choices=FORMATS, default='safetensors',
                        help='safetensors (timm folder), onnx, pt2, aoti, torchscript (deprecated)')
    export.add_argument('--force', action='store_true', help='replace a non-empty --output')
    export.add_argument('--model', help='architecture of an authors\' checkpoint when its shapes do not tell it')
    export.add_argument('--data', help='images to check the export on (default: the training data; random inputs '
                                       'for an authors\' checkpoint)')
    export.add_argument('--images', type=int, default=256, help='how many images to check on')
    _add_trust_option(export, 'the checkpoint')
    export.set_defaults(run=_export)

    pick = commands.add_parser('pick', help='the most accurate width that fits a latency, MACs or parameter budget',
                               description='Answer with the most accurate width of a checkpoint within a budget on '
                                           'this device; accuracies come from `scalavit eval` (run first if missing).')
    pick.add_argument('checkpoint')
    budget = pick.add_mutually_exclusive_group(required=True)
    budget.add_argument('--latency-ms', type=float, help='median latency budget in milliseconds')
    budget.add_argument('--macs', type=_amount, help='MACs per image, e.g. 3M')
    budget.add_argument('--params', type=_amount, help='parameters, e.g. 200K')
    pick.add_argument('--batch', type=int, default=1, help='batch size the latency budget is for')
    pick.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    pick.add_argument('--data', help="evaluation data when no evaluation is saved (default: the training data)")
    pick.add_argument('--model', help="architecture of an authors' checkpoint when its shapes do not tell it")
    pick.add_argument('--repeats', type=int, default=30, help='timed calls per width when measuring latency')
    _add_compile_options(pick)
    _add_trust_option(pick, 'the checkpoint')
    pick.set_defaults(run=_pick)

    serve = commands.add_parser(
        'serve', help='serve a checkpoint over HTTP at whichever width the load allows (SlackFit)',
        description='Serve one slimmable checkpoint: POST /predict an image, get its top-5 classes. Whenever the '
                    'model is free the controller runs the most accurate width and batch size whose measured p95 '
                    'latency fits the earliest deadline; requests that cannot be served in time get 503 at once.')
    serve.add_argument('checkpoint', help="a scalavit run or checkpoint, or an authors' .pth")
    serve.add_argument('--host', default='127.0.0.1', help='address to bind (default 127.0.0.1: this machine only)')
    serve.add_argument('--port', type=int, default=8000)
    serve.add_argument('--slo-ms', type=float, default=100.0, help='deadline of a request without X-SLO-Ms')
    serve.add_argument('--policy', default='slackfit', help='slackfit, maxacc (best width, batch 1) or fixed:R')
    serve.add_argument('--max-batch-size', type=int, default=32, help='profiled batch sizes: 1, 2, 4, ... this')
    serve.add_argument('--max-queue', type=int, default=256, help='requests waiting at most; 503 beyond')
    serve.add_argument('--max-body-bytes', type=int, default=10 * 2 ** 20, help='413 beyond')
    serve.add_argument('--max-pixels', type=int, default=25_000_000,
                       help="413 for an image with more pixels, from its header, before it is decoded")
    serve.add_argument('--decode-threads', type=int, default=0,
                       help='threads decoding and preprocessing images (default 0: one per core)')
    serve.add_argument('--served-model-name', default='scalavit',
                       help="the model's name in the Open Inference Protocol (/v2/models/NAME/infer)")
    limits = serve.add_argument_group('connection limits (each phase of a request is bounded)')
    limits.add_argument('--header-timeout', type=float, default=10.0,
                        help="seconds for a request's line and headers to arrive (408, or the idle connection "
                             "closed)")
    limits.add_argument('--body-timeout', type=float, default=30.0, help="seconds for a request's body (408)")
    limits.add_argument('--keep-alive-timeout', type=float, default=5.0,
                        help='seconds an idle connection stays open between requests')
    limits.add_argument('--max-header-bytes', type=int, default=32 * 1024, help="431 for a larger request head")
    limits.add_argument('--max-headers', type=int, default=100, help='431 for more header fields')
    limits.add_argument('--max-connections', type=int, default=1024,
                        help='open connections at most; beyond, the one idle the longest is closed, or the newcomer '
                             'answered 503 when none is idle')
    limits.add_argument('--drain-timeout', type=float, default=10.0,
                        help='on SIGTERM: seconds for the requests in flight, then as many for the queue')
    serve.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    serve.add_argument('--threads', type=int, help='torch threads for the forward (default: torch\'s)')
    serve.add_argument('--switch-interval-ms', type=float, default=0.5,
                       help="Python's GIL switch interval in the server (default 0.5; Python's own is 5): how long the "
                            "event loop may hold the GIL while the model thread waits to go on with its forward")
    serve.add_argument('--profile-repeats', type=int, default=5,
                       help='timed calls per (width, batch size) when no cached profile fits (default 5)')
    serve.add_argument('--profile-cache', default='', metavar='DIR',
                       help='cached profiles, one per machine, weights, backend and threads '
                            '(default ~/.cache/scalavit/profiles); a restart reuses it after a check')
    serve.add_argument('--no-profile-cache', dest='use_profile_cache', action='store_false',
                       help='measure the profile at every start and cache nothing')
    serve.add_argument('--data', help="evaluation data when no `scalavit eval` report is beside the checkpoint")
    serve.add_argument('--model', help="architecture of an authors' checkpoint when its shapes do not tell it")
    _add_compile_options(serve, serving=True)
    _add_trust_option(serve, 'the checkpoint')
    scale = serve.add_argument_group('scale-out on Ray Serve (pip install scalavit[ray]): replicas behind Ray\'s proxy')
    scale.add_argument('--replicas', type=int, help='replicas, each with its own model, batcher and profile')
    scale.add_argument('--min-replicas', type=int, help='autoscale on ongoing requests between these bounds')
    scale.add_argument('--max-replicas', type=int)
    serve.add_argument('--onnxruntime', action='store_true',
                       help='serve every width through ONNX Runtime (each exported to ONNX and checked at start; CPU)')
    _add_cascade_options(serve, "a cascade as one more choice of SlackFit (calibrated as `eval --cascade` does, "
                                "its cascade.json reused)")
    serve.set_defaults(run=_serve)
    return parser


def _add_cascade_options(parser: argparse.ArgumentParser, title: str) -> None:
    cascade = parser.add_argument_group(title)
    cascade.add_argument('--cascade', type=_widths_list, help='increasing grid widths, e.g. 0.25,1.0')
    cascade.add_argument('--cascade-within', type=float, default=0.3,
                         help="thresholds chosen as the cheapest within this many points of the last width's top-1 "
                              "on the calibration images (default 0.3)")
    cascade.add_argument('--calibration', help="image folder (FOLDER/<class>/<image>) to choose thresholds on "
                                               "(default: 5000 images of the training split; never the evaluation "
                                               "split)")
    cascade.add_argument('--confidence', default='probability', choices=('probability', 'margin', 'entropy'),
                         help='top-1 probability (default), top-1 minus top-2, or 1 - normalised entropy')


def _one_line(error: BaseException) -> str:
    """The message of an error; an OSError raised by the system names its file, as the user gave it."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return ' '.join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with trusted_checkpoints(getattr(args, 'trust_checkpoint', False)):
            args.run(args)
    except (ValueError, OSError, CompileError) as error:
        print(f"scalavit {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scalavit {args.command}: interrupted; what was saved stays (a run continues with --resume)",
              file=sys.stderr)
        return 130
    return 0
