"""The one shared model on its device: images decoded and preprocessed as the model expects, a batch answered at any
width of the grid (the width is the forward's argument: no module state changes, no copies), and the latency
profile of every (width, batch size) measured here."""
import functools
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from timm.data import resolve_data_config

from ..cascade import CONFIDENCES, cascade_widths
from ..checkpoint import load_model, weights_digest
from ..compiled import CompiledWidths, check_can_compile, compile_widths
from ..data import build_transform
from ..evaluate import count_macs, time_call
from ..export import export_width
from ..images import decode
from ..model import SlimmableVisionTransformer, check_device
from ..pick import saved_report
from .policy import CascadePlan


class OnnxRuntimeWidths:
    """Every width exported to ONNX (and checked, as ``scalavit export`` checks it) and run by an ONNX Runtime
    session of its own: ``widths(x, width)`` answers as ``model(x, width)``."""

    def __init__(self, model: SlimmableVisionTransformer, folder: Path, threads: int,
                 widths: Optional[list[float]] = None):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle threads would otherwise spin between batches, taking the cores from preprocessing and HTTP.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self.grid, self.sessions = model.grid, {}
        for width in model.widths if widths is None else [model.grid.snap(w) for w in widths]:
            export_width(model, width, folder / f'{width:g}', 'onnx')
            self.sessions[width] = onnxruntime.InferenceSession(
                str(folder / f'{width:g}' / 'model.onnx'), options, providers=['CPUExecutionProvider'])

    def __call__(self, x: torch.Tensor, width: Optional[float] = None) -> torch.Tensor:
        session = self.sessions[self.grid.largest if width is None else self.grid.snap(width)]
        return torch.from_numpy(session.run(None, {'images': x.numpy()})[0])


BACKENDS = ('eager', 'compiled', 'onnxruntime')


@dataclass
class Prediction:
    top: list[tuple[str, float]]  # the top-k (class name, probability)
    confidence: float  # how sure, as the cascade measures it


class Runner:
    def __init__(self, checkpoint: str, device: str = 'cpu', model_name: Optional[str] = None, top_k: int = 5,
                 backend: str = 'eager', compile_cache: Optional[Path] = None, confidence: str = 'probability'):
        self.checkpoint, self.device, self.model_name = checkpoint, check_device(device), model_name
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if backend == 'compiled':
            check_can_compile(self.device)
        if backend == 'onnxruntime' and (self.device.type != 'cpu' or importlib.util.find_spec('onnxruntime') is None):
            raise ValueError("--onnxruntime serves on the CPU with the onnxruntime package: pip install "
                             "'scalavit[onnx]' and use --device cpu")
        self.backend, self.compile_cache = backend, compile_cache
        model, self.config = load_model(checkpoint, model_name)
        self.model = model.to(self.device).eval()
        self.forward = self.model  # the compiled widths once ``prepare`` has compiled them
        cfg = self.model.pretrained_cfg
        self.classes = list(cfg.get('label_names') or range(self.model.num_classes))
        self.input_size = tuple(cfg['input_size'])
        self.mode = 'L' if self.input_size[0] == 1 else 'RGB'
        self.transform = build_transform(resolve_data_config(model=self.model), False)
        self.top_k = min(top_k, self.model.num_classes)
        self.confidence_name, self.confidence = confidence, CONFIDENCES[confidence]

    @property
    def widths(self) -> tuple[float, ...]:
        return self.model.widths

    def prepare(self) -> None:
        """Compile, or export to ONNX Runtime, every width when asked (before the profile, which then measures what
        serves)."""
        if self.forward is not self.model:
            return
        if self.backend == 'compiled':
            self.forward = compile_widths(self.model, cache_dir=self.compile_cache, progress=False, serving=True)
        elif self.backend == 'onnxruntime':
            self._onnx_folder = tempfile.TemporaryDirectory(prefix='scalavit-serve-onnx-')
            self.forward = OnnxRuntimeWidths(self.model, Path(self._onnx_folder.name), torch.get_num_threads())

    def close(self) -> None:
        """Unloads the compiled widths and removes the exported ones: the model thread, a daemon, would keep them
        past the exit, and their unpacked files in the temporary folder with them."""
        if isinstance(self.forward, CompiledWidths):
            self.forward.close()
        if self.backend == 'onnxruntime' and self.forward is not self.model:
            self._onnx_folder.cleanup()
        self.forward = self.model

    def preprocess(self, data: bytes, max_pixels: Optional[int] = None) -> torch.Tensor:
        """An image file as the model's input: its size, channels, mean and std (timm's eval transform)."""
        return self.transform(decode(data, self.mode, max_pixels))

    @torch.inference_mode()
    def run(self, images: list[torch.Tensor], width: float) -> list[Prediction]:
        """The top-k (class name, probability) and the confidence of each image at ``width``."""
        logits = self.forward(torch.stack(images).to(self.device), width).float()
        probabilities, indices = logits.softmax(-1).topk(self.top_k, dim=-1)
        return [Prediction([(str(self.classes[i]), round(float(p), 6)) for i, p in zip(row_i, row_p)], sure)
                for row_i, row_p, sure in zip(indices.tolist(), probabilities.tolist(),
                                              self.confidence(logits).tolist())]

    def macs(self) -> dict[float, int]:
        """Multiply-accumulates for one image at every width."""
        return {w: count_macs(self.model, w, self.input_size) for w in self.widths}

    def measure_latency(self, batch_sizes: list[int], repeats: int
                        ) -> tuple[dict[tuple[float, int], float], dict[tuple[float, int], float]]:
        """The p95 and the median seconds of a forward at every (width, batch size), after warm-up, CUDA
        synchronised."""
        p95, median = {}, {}
        for width in self.widths:
            for batch in batch_sizes:
                x = torch.randn(batch, *self.input_size, device=self.device)
                with torch.inference_mode():
                    times = time_call(lambda: self.forward(x, width), repeats, warmup=1)
                p95[(width, batch)] = float(np.percentile(times, 95))
                median[(width, batch)] = float(np.median(times))
        return p95, median

    @functools.cached_property
    def weights(self) -> str:
        """SHA-256 of the served weights."""
        return weights_digest(self.model.state_dict())

    def accuracies(self, data: Optional[str]) -> dict[float, float]:
        """Top-1 of every width from ``scalavit eval``'s report beside the checkpoint (evaluated now if missing)."""
        report = saved_report(self.checkpoint, data, str(self.device), self.model_name,
                              weights=self.weights)
        accuracy = {row['width']: row['top1'] for row in report['rows']}
        missing = [w for w in self.widths if w not in accuracy]
        if missing:
            raise ValueError(f"the evaluation report beside {self.checkpoint} lacks widths {missing}; run "
                             f"`scalavit eval {self.checkpoint}` again")
        return {w: accuracy[w] for w in self.widths}

    def cascade_plan(self, widths: list[float], data: Optional[str], within_points: float,
                     calibration: Optional[str]) -> CascadePlan:
        """The cascade ``widths`` with thresholds calibrated as ``scalavit eval --cascade`` does (its cascade.json
        beside the checkpoint when it measured the same, else calibrated now and saved there): its thresholds, its
        top-1 on the evaluation set, and the share of those images that reached each stage."""
        from ..cascade_report import saved_cascade  # with matplotlib, for its plot: only when serving a cascade

        widths = cascade_widths(self.model.grid, widths)
        result = saved_cascade(self.checkpoint, widths, data, str(self.device), within_points, calibration,
                               self.confidence_name, self.model_name, self.weights)
        chosen = result['evaluation']['chosen']
        reach = [1.0 - sum(chosen['answered'][:stage]) for stage in range(len(result['widths']))]
        return CascadePlan(tuple(result['widths']), tuple(chosen['thresholds']),
                           tuple(max(0.0, share) for share in reach), chosen['top1'])
