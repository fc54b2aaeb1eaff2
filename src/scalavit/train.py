"""The training loop: data, optimizer, schedule, mixed precision, DistributedDataParallel, checkpoints and logs.

One process per device; ``torchrun --nproc_per_node=N -m scalavit train ...`` runs N of them. ``--batch-size`` is per
process. Every rank draws the same sub-network widths at every step (one generator, seeded alike), so the
all-reduced gradient is the gradient of the whole global batch; data-side randomness (augmentation, Mixup/CutMix,
drop-path) is seeded with seed + rank, as timm's training script does, so that ranks do not augment alike.
"""
import contextlib
import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import timm
import torch
from timm.data import Mixup, resolve_data_config
from timm.data.mixup import mixup_target
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from .checkpoint import (build_model_from_checkpoint, check_same_classes, load_checkpoint, load_weights,
                         random_states, save_atomically, set_random_states)
from .compiled import check_can_compile
from .compiled_training import compile_for_training
from .config import TrainConfig
from .data import SkipUnreadable, build_datasets, build_transform, collate_readable, describe
from .distributed import setup_distributed
from .files import check_writable_directory, write_text_atomically
from .finetune import initialize
from .gradstats import GradientStats
from .losses import Logits
from .methods import Scala, Separate, USNet
from .model import SlimmableVisionTransformer
from .rundir import (RunFolderLock, RunLog, check_output, has_checkpoint, read_log, remove_stale_temporaries,
                     run_directory)
from .widths import WidthGrid, scaled


def build_method(config: TrainConfig):
    grid = WidthGrid(config.smallest, config.largest, config.granularity)
    if config.method == 'scala':
        return Scala(grid, config.transfer, config.sampling, config.noise_calibration, config.full_warmup_epochs,
                     config.always_smallest)
    if config.method == 'usnet':
        return USNet(grid, config.always_smallest)
    return Separate()


def model_kwargs(config: TrainConfig, num_classes: int, full_embed_dim: int) -> dict[str, Any]:
    """What ``timm.create_model(config.model, **kwargs)`` needs to rebuild the trained network."""
    kwargs = dict(num_classes=num_classes, drop_path_rate=config.drop_path, smallest=config.smallest,
                  largest=config.largest, granularity=config.granularity,
                  isolated_activation=config.isolated_activation and config.method == 'scala')
    if config.method == 'separate':
        # An ordinary model of width r: the architecture at int(r * D) channels, with a grid of one width.
        WidthGrid(config.smallest, config.largest, config.granularity).snap(config.width)
        kwargs.update(embed_dim=scaled(full_embed_dim, config.width), smallest=1.0, largest=1.0,
                      isolated_activation=False)
    return kwargs


def with_absolute_data(config: TrainConfig) -> TrainConfig:
    """The data folder as an absolute path, so that the run's config.json names it from any directory."""
    if config.data != 'fashion-mnist' and Path(config.data).is_dir():
        return dataclasses.replace(config, data=str(Path(config.data).resolve()))
    return config


def load_teacher(path: str, student: SlimmableVisionTransformer, classes: list[str],
                 device: str) -> SlimmableVisionTransformer:
    checkpoint = load_checkpoint(path)
    check_same_classes(classes, checkpoint.get('classes', classes), 'the training data', f"--teacher {path}")
    teacher = build_model_from_checkpoint(checkpoint, f"teacher {path}")
    if teacher.num_classes != student.num_classes:
        raise ValueError(f"teacher {path} predicts {teacher.num_classes} classes, the student {student.num_classes}")
    if teacher.pretrained_cfg['input_size'] != student.pretrained_cfg['input_size']:
        raise ValueError(f"teacher {path} takes inputs of {teacher.pretrained_cfg['input_size']}, the student "
                         f"{student.pretrained_cfg['input_size']}")
    return teacher.to(device).eval().requires_grad_(False)


class SubNetworkPasses:
    """``run(width, loss_fn, last)`` for the methods: one sub-network's forward and backward on the step's batch.

    Gradients accumulate across passes; under DDP they are all-reduced only on the last pass of the step.
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, autocast, scaler):
        self.model, self.images, self.autocast, self.scaler = model, images, autocast, scaler

    def __call__(self, width: float, loss_fn, last: bool) -> tuple[Logits, torch.Tensor]:
        ddp = getattr(self.model, '_orig_mod', self.model)  # torch.compile keeps the DDP module inside
        no_sync = ddp.no_sync if isinstance(ddp, DistributedDataParallel) and not last else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with self.autocast():
                output = self.model(self.images, width)
                loss = loss_fn(output)
            self.scaler.scale(loss).backward()
        output = tuple(o.detach() for o in output) if isinstance(output, tuple) else output.detach()
        return output, loss.detach()


def width_key(width: float) -> str:
    return f'top1@{width:g}'


class Trainer:
    def __init__(self, config: TrainConfig, resume: Optional[str] = None):
        self.config = config = with_absolute_data(config)
        self.ddp = setup_distributed(config.device)
        self.device = torch.device(f'cuda:{self.ddp.local_rank}' if config.device == 'cuda' and self.ddp.enabled
                                   else config.device)
        self.output = Path(config.output)
        self.lock = self._hold_output() if self.ddp.is_main else None
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    def _set_up(self, resume: Optional[str]) -> None:
        config = self.config
        resume_checkpoint = self._check_output_and_resume(resume)
        self._seed(config.seed + self.ddp.rank)  # each rank its own augmentations, Mixup and drop-path

        self.method = build_method(config)
        probe = timm.create_model(config.model)
        data_config = resolve_data_config(model=probe)
        train_transform = build_transform(data_config, True, config.auto_augment, config.reprob, config.crop_scale,
                                          config.hflip)
        eval_transform = build_transform(data_config, False)
        train_set, eval_set, self.classes = build_datasets(
            config.data, train_transform, eval_transform, data_config['input_size'][0])
        self._say(f"{config.data}: {len(self.classes)} classes; {describe('training', train_set)}; "
                  f"{describe('evaluation', eval_set)}")
        self.model_kwargs = model_kwargs(config, len(self.classes), probe.embed_dim)
        self.model = self._build_model(start_from_init=resume_checkpoint is None)
        self.teacher = load_teacher(config.teacher, self.model, self.classes, self.device) if config.teacher else None
        self.train_loader, self.eval_loader = self._loaders(train_set, eval_set)
        self.steps_per_epoch = len(self.train_loader)

        self._set_up_optimization()
        self.width_generator = torch.Generator().manual_seed(config.seed)
        self.epoch, self.step, self.best, self.log_rows = 0, 0, -1.0, []
        self.grad_stats = self._gradient_stats()
        if resume_checkpoint is not None:
            self._restore(resume_checkpoint)
        self.cuda_graphs = config.compile and config.compile_mode == 'reduce-overhead'
        self.train_model = self._wrap_for_training(data_config['input_size'])

    # set-up

    def _build_model(self, start_from_init: bool) -> SlimmableVisionTransformer:
        config = self.config
        model = timm.create_model(config.model, **self.model_kwargs)
        if config.init and start_from_init:
            initialize(model, config.init, log=self._say)
        if config.freeze_backbone:  # the paper's linear probe: only the classifier(s), read at every width
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name.startswith('head'))
        return model.to(self.device)

    def _set_up_optimization(self) -> None:
        """The optimizer, its schedule, mixed precision and Mixup/CutMix."""
        config = self.config
        self.optimizer = create_optimizer_v2(self.model, 'adamw', lr=config.lr, weight_decay=config.weight_decay,
                                             layer_decay=config.layer_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, 'cosine', num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            min_lr=config.min_lr, warmup_lr=config.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        amp_dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(config.amp)
        self.autocast = (lambda: torch.autocast('cuda', dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler('cuda', enabled=config.amp == 'fp16')
        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                           num_classes=len(self.classes)) if config.mixup > 0 or config.cutmix > 0 else None

    def _wrap_for_training(self, input_size: tuple[int, int, int]) -> torch.nn.Module:
        """The model the steps run: DistributedDataParallel under torchrun, compiled with --compile."""
        config, train_model = self.config, self.model
        if self.ddp.enabled:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            train_model = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.model.distilled and self.teacher is None)
        if not config.compile:
            return train_model
        check_can_compile(self.device)
        if self.cuda_graphs and self.ddp.enabled:
            raise ValueError("--compile-mode reduce-overhead runs in one process; under torchrun use "
                             "--compile-mode default")
        example = torch.zeros(config.batch_size, *input_size, device=self.device)
        return compile_for_training(train_model.train(), self.model.widths, example, self.autocast, self.ddp.is_main,
                                    config.compile_mode, config.compile_regional)

    def _hold_output(self) -> RunFolderLock:
        """The run directory, created if new and held by this process alone until ``close``."""
        check_writable_directory(self.output, '--output', create=False)
        self.created_output = not self.output.exists()
        self.output.mkdir(parents=True, exist_ok=True)
        return RunFolderLock(self.output, self._say)

    def close(self) -> None:
        """Let go of the run directory (removed again if this run created it and wrote nothing)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if self.created_output and not any(self.output.iterdir()):
                self.output.rmdir()

    def _check_output_and_resume(self, resume: Optional[str]) -> Optional[dict]:
        """The checkpoint to continue from (None: start from step 0), once the output directory is known to be safe
        to write: new, empty, or the resumed run's own."""
        if self.ddp.is_main:  # only rank 0 writes there; other ranks would race with its first files
            check_output(self.output, resume)  # under the lock: no other process can write there meanwhile
            if resume:
                remove_stale_temporaries(self.output)
        if resume and has_checkpoint(resume):
            checkpoint = load_checkpoint(resume)
            if 'log' not in checkpoint:  # written before checkpoints kept their log rows
                checkpoint['log'] = read_log(run_directory(resume), checkpoint['epoch'])
            return checkpoint
        return None

    def _gradient_stats(self) -> Optional[GradientStats]:
        if not self.config.grad_stats:
            return None
        if self.ddp.enabled:
            raise ValueError("--grad-stats compares the gradients of one process; run it without torchrun")
        return GradientStats(self.model, self.output / 'grad_stats.jsonl', self.scaler.get_scale)

    def _say(self, line: str) -> None:
        if self.ddp.is_main:
            print(line, flush=True)

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _loaders(self, train_set, eval_set) -> tuple[DataLoader, DataLoader]:
        config, ddp = self.config, self.ddp
        sampler = DistributedSampler(train_set, ddp.world_size, ddp.rank, shuffle=True, seed=config.seed,
                                     drop_last=True) if ddp.enabled else None
        common = dict(num_workers=config.workers, pin_memory=self.device.type == 'cuda', collate_fn=collate_readable,
                      persistent_workers=False)
        train_loader = DataLoader(SkipUnreadable(train_set), config.batch_size, shuffle=sampler is None,
                                  sampler=sampler, drop_last=True, **common)
        if len(train_loader) == 0:
            raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of "
                             f"{config.batch_size} per process; lower --batch-size")
        # Each rank evaluates its own shard; counts are summed across ranks.
        shard = Subset(eval_set, range(ddp.rank, len(eval_set), ddp.world_size))
        eval_loader = DataLoader(SkipUnreadable(shard), config.batch_size * 2, shuffle=False, **common)
        return train_loader, eval_loader

    def _restore(self, checkpoint: dict) -> None:
        saved = checkpoint['config']
        for name in ('model', 'method'):
            if saved[name] != getattr(self.config, name):
                raise ValueError(f"--resume: the checkpoint was trained with --{name} {saved[name]}, this run asks "
                                 f"for {getattr(self.config, name)}")
        load_weights(self.model, checkpoint['model'], 'resume checkpoint')
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.scheduler.load_state_dict(checkpoint['scheduler'])
        self.scaler.load_state_dict(checkpoint['scaler'])
        self.epoch, self.step, self.best = checkpoint['epoch'], checkpoint['step'], checkpoint['best']
        self._say(f"resuming {self.output} after epoch {self.epoch} (step {self.step}), towards {self.config.epochs} "
                  "epochs")
        self.log_rows = list(checkpoint['log'])
        self.width_generator.set_state(checkpoint['random_states']['widths'])
        set_random_states(checkpoint['random_states'])  # rank 0's, which saved them
        if self.ddp.rank > 0:
            self._seed(self.config.seed + self.ddp.rank + self.step)
        if self.grad_stats is not None:
            self.grad_stats.resume(self.step)

    # the loop

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        config = self.config
        log = RunLog(self.output, self._log_columns())
        if self.ddp.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.output / 'config.json', json.dumps(dataclasses.asdict(config), indent=2) + '\n')
            log.write(self.log_rows)
        row = {}
        while self.epoch < config.epochs and not self._out_of_steps():
            row = self._train_epoch()
            last = self.epoch + 1 == config.epochs or self._out_of_steps()
            widths = self.model.widths if last else self._eval_widths()
            row.update(self.evaluate(widths))
            self.epoch += 1
            row['epoch'] = self.epoch
            score = float(np.mean([row[width_key(w)] for w in widths]))
            if self.ddp.enabled:
                row['ranks_in_sync'] = self.ddp.replicas_identical(self.model)
                if not row['ranks_in_sync']:
                    raise RuntimeError(f"after epoch {self.epoch} the {self.ddp.world_size} processes hold different "
                                       "weights; DistributedDataParallel did not keep them in step")
            self.log_rows.append(row)
            if self.ddp.is_main:
                self._save(score)
                log.write(self.log_rows)
                if self.grad_stats is not None:
                    self.grad_stats.save()
        self.ddp.close()
        return row

    def _out_of_steps(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _eval_widths(self) -> list[float]:
        if self.config.eval_widths:
            return [self.model.grid.snap(w) for w in self.config.eval_widths]
        grid = self.model.grid
        quarter_points = {min(grid.widths, key=lambda w: abs(w - q)) for q in (0.25, 0.5, 0.75, 1.0)}
        return sorted(quarter_points | {grid.smallest, grid.largest})

    def _loss_names(self) -> list[str]:
        """The sub-networks of a step, in the order the method runs them."""
        return {'scala': ['full', 'upper', 'lower', 'smallest'], 'usnet': ['full', 'random1', 'random2', 'smallest'],
                'separate': ['full']}[self.config.method]

    def _log_columns(self) -> list[str]:
        return (['epoch', 'step', 'lr'] + [f'loss_{name}' for name in self._loss_names()]
                + [width_key(w) for w in self.model.widths]
                + ['skipped_images', 'images_per_s', 'time_s', 'ranks_in_sync'])

    def _train_epoch(self) -> dict:
        config, model = self.config, self.train_model
        model.train()
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)
        totals, count, skipped, start = {}, 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{config.epochs}", disable=not self.ddp.is_main,
                   dynamic_ncols=True, leave=True)
        for images, targets, dropped in bar:
            skipped += dropped
            # A batch that unreadable images left too small is skipped on every rank, or on none.
            if not self.ddp.all_agree(images is not None and len(images) >= 2, self.device):
                continue
            losses = self._train_step(images, targets)
            for name, value in losses.items():
                if name.startswith('loss_'):
                    totals[name] = totals.get(name, 0.0) + float(value)
            count += 1
            rate = count * len(images) * self.ddp.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(losses['loss_full']):.3f}", img_s=f"{rate:.0f}", refresh=False)
            if self._out_of_steps():
                break
        bar.close()
        elapsed = time.perf_counter() - start
        skipped = self.ddp.sum(skipped, self.device)
        return dict(step=self.step, lr=self.optimizer.param_groups[0]['lr'],
                    **{name: total / max(count, 1) for name, total in totals.items()},
                    skipped_images=int(skipped), images_per_s=round(rate if count else 0.0, 1),
                    time_s=round(elapsed, 1))

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict:
        config = self.config
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.mixup is not None:
            if len(images) % 2:  # a skipped unreadable image left an odd batch; Mixup pairs images up
                images, targets = images[:-1], targets[:-1]
            images, targets = self.mixup(images, targets)
        else:
            targets = mixup_target(targets, len(self.classes), smoothing=config.smoothing)
        self.scheduler.step_update(self.step)
        for group in self.optimizer.param_groups:
            group['lr'] *= self.method.lr_scale(self.epoch)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad(), self.autocast():
                teacher_logits = self.teacher(images)
        self.optimizer.zero_grad(set_to_none=True)
        run = SubNetworkPasses(self.train_model, images, self.autocast, self.scaler)
        recording = self.grad_stats is not None and self.step % config.grad_stats == 0
        if recording:
            run = self.grad_stats.recording(run, self._loss_names())
        losses = self.method.step(run, targets, self.epoch, self.width_generator, teacher_logits)
        if recording:
            self.grad_stats.record(self.step + 1, self.epoch)
        if config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            # The norm before clipping; inf or nan on an fp16 step that overflowed (the scaler then skips it).
            losses['grad_norm'] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if not math.isfinite(float(losses['loss_full'])):
            raise FloatingPointError(f"loss is {float(losses['loss_full'])} at step {self.step}; lower --lr "
                                     "or enable --clip-grad")
        return losses

    @torch.no_grad()
    @torch.compiler.set_stance('force_eager')  # --compile's graphs are for training, even blocks compiled in place
    def evaluate(self, widths) -> dict:
        """Top-1 (%) of every width in ``widths``; each batch is decoded once and run through all of them."""
        model = self.model.eval()
        correct = torch.zeros(len(widths), dtype=torch.float64)
        total = 0
        batches = tqdm(self.eval_loader, desc='evaluating', delay=2, leave=False, disable=not self.ddp.is_main)
        for images, targets, _ in batches:
            if images is None:
                continue
            images, targets = images.to(self.device), targets.to(self.device)
            with self.autocast():
                for i, width in enumerate(widths):
                    correct[i] += (model(images, width).argmax(-1) == targets).sum().item()
            total += len(targets)
        correct, total = self.ddp.sum(correct, self.device), self.ddp.sum(total, self.device)
        return {width_key(w): round(100 * float(c) / max(total, 1), 2) for w, c in zip(widths, correct)}

    def _save(self, score: float) -> None:
        checkpoint = dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            epoch=self.epoch, step=self.step, best=max(self.best, score),
            config=dataclasses.asdict(self.config), model_kwargs=self.model_kwargs, classes=self.classes,
            random_states=dict(random_states(), widths=self.width_generator.get_state()), log=self.log_rows,
        )
        # best.pt first: a crash between the two leaves last.pt behind, and resuming redoes (and rewrites) both.
        if score > self.best:
            self.best = score
            save_atomically(checkpoint, self.output / 'best.pt')
        save_atomically(checkpoint, self.output / 'last.pt')


def train(config: TrainConfig, resume: Optional[str] = None) -> dict:
    """Train and return the last epoch's log row (losses, learning rate, top-1 of every width evaluated)."""
    return Trainer(config, resume).fit()
