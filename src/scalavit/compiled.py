"""Every width of a slimmable model compiled ahead of time: ``CompiledWidths(model)(x, width)`` gives
``model(x, width)`` without eager PyTorch's per-operation overhead.

Each width is exported (``torch.export``, the batch dimension dynamic) and compiled by AOTInductor into a package of
its own: one graph per width, so no width ever recompiles another and dynamo's recompile limit never applies. The
packages hold no weights: they read the model's own tensors (``user_managed``), so thirteen compiled widths cost no
more memory than one model. Packages are cached on disk by what decides the code (the exported graph, the weights'
shapes and dtypes, torch, the device), so a later start, or another checkpoint of the same architecture, loads them in
milliseconds.

``JitCompiledWidths`` is the same interface built in this process by ``torch.compile``: on the CPU with inductor's C++
wrapper, whose forward releases Python's GIL (the server's backend there), on CUDA optionally replayed as CUDA graphs.
``compile_widths`` picks the kind for a device. (Compiling for training: ``compiled_training``.)
"""
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from torch._dynamo.decorators import mark_unbacked
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
from torch.export import Dim, ExportedProgram
from tqdm import tqdm

from .files import write_atomically
from .model import SlimmableVisionTransformer, _checked_input

# On a CPU machine that has a CUDA toolkit, compiling makes torch say it found no CUDA runtime: true, and of no
# concern to a CPU build, so that one line is left out.
logging.getLogger('torch.utils.cpp_extension').addFilter(
    lambda record: not record.getMessage().startswith('No CUDA runtime is found'))

MAX_BATCH = 4096  # the largest batch one compiled call takes; larger ones are split
CUDA_GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)  # the batch sizes captured on CUDA; a batch is padded up to one


class AtWidth(nn.Module):
    """The slimmable model at one width, as a module of one input (what ``torch.export`` takes)."""

    def __init__(self, model: SlimmableVisionTransformer, width: float):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.width)


def export_program(model: nn.Module, input_size: tuple[int, int, int], width: Optional[float] = None) -> ExportedProgram:
    """``torch.export`` of the model in eval mode at ``width`` (None: a plain model) for images of ``input_size``
    (channels, height, width), any batch size up to ``MAX_BATCH``."""
    module = model if width is None else AtWidth(model, width)
    parameter = next(model.parameters())
    example = torch.zeros(2, *input_size, device=parameter.device, dtype=parameter.dtype)
    batch = Dim('batch', min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def one_graph_per_width():
    """Dynamo keeps the graphs of every width on the one code object they share: while the widths compile, these
    graphs are not recompilations to limit (the limit is as it was after the block)."""
    return torch._dynamo.config.patch(recompile_limit=MAX_WIDTH_GRAPHS)


MAX_WIDTH_GRAPHS = 1024


def default_cache_dir() -> Path:
    """``$SCALAVIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/scalavit/compiled``, else ``~/.cache/scalavit/compiled``."""
    if os.environ.get('SCALAVIT_CACHE_DIR'):
        return Path(os.environ['SCALAVIT_CACHE_DIR'])
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'scalavit' / 'compiled'


class CompileError(RuntimeError):
    """A width could not be compiled here (no compiler, an unsupported device, a failed build)."""


def check_can_compile(device: torch.device) -> None:
    """The clear error for a machine where AOTInductor cannot build: it needs a C++ compiler."""
    if shutil.which(os.environ.get('CXX', 'g++')) is None and shutil.which('c++') is None:
        raise CompileError("--compile needs a C++ compiler on this machine (AOTInductor builds each width with it); "
                           "install one (apt-get install -y g++) or run without --compile")
    if device.type not in ('cpu', 'cuda'):
        raise CompileError(f"--compile supports cpu and cuda devices, not {device.type}; run without --compile")


def _package_options(weights: bool) -> dict:
    # Without the weights, no weight may be baked into the code either: inductor inlines small ones (a 3-class
    # head's bias) unless told to keep every tensor a constant that the loader fills.
    return {'aot_inductor.package_constants_in_so': weights, 'always_keep_tensor_constants': not weights}


def _machine(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{platform.machine()} {torch.backends.cpu.get_cpu_capability()}'


def _cache_key(program: ExportedProgram, device: torch.device) -> str:
    """What decides the compiled code: the graph, the shapes and dtypes of the weights, torch and the device."""
    weights = sorted((name, tuple(t.shape), str(t.dtype)) for name, t in program.state_dict.items())
    text = '\n'.join([program.graph_module.code, repr(weights), torch.__version__, _machine(device),
                      repr(_package_options(weights=False))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_LOAD_CHECK = 'import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])'


def check_packages_load(path: Path, device: torch.device) -> None:
    """Some torch builds crash the whole process when they load an AOTInductor package (docs/compile.md). So the
    first package is loaded in a child process, once per cache folder, torch build and device, and a crash there is
    a clear error here."""
    key = hashlib.sha256(f'{torch.__version__} {_machine(device)}'.encode()).hexdigest()[:16]
    marker = path.parent / f'.packages-load-{key}'
    if marker.is_file():
        return
    try:
        result = subprocess.run([sys.executable, '-c', _LOAD_CHECK, str(path)], capture_output=True, text=True,
                                timeout=600)
    except subprocess.TimeoutExpired:
        raise CompileError(f"loading an AOTInductor package with torch {torch.__version__} did not finish in 10 "
                           "minutes; run without --compile") from None
    if result.returncode < 0:  # killed by a signal; an exception (a damaged package) is handled by the caller
        raise CompileError(f"torch {torch.__version__} crashes when it loads an AOTInductor package on {device.type} "
                           f"(signal {-result.returncode}); run without --compile, or install the torch this "
                           "project pins (pyproject.toml)")
    if result.returncode == 0:
        marker.write_text('')


def compile_package(program: ExportedProgram, path: Path, weights: bool = True) -> None:
    """AOTInductor's package of ``program`` written (atomically) to ``path``; ``weights=False`` leaves the weights
    out, to be given by ``load_constants``."""
    options = _package_options(weights)
    try:
        write_atomically(path, lambda tmp: torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp), inductor_configs=options), suffix='.pt2')
    except Exception as error:  # inductor's own errors run to pages; their first line says what failed
        first_line = (str(error).strip().splitlines() or [''])[0]
        raise CompileError(f"AOTInductor could not compile {path.name} ({type(error).__name__}: {first_line}); "
                           "run without --compile or choose another format") from error


class CompiledWidths:
    """The model's widths compiled once; ``compiled(x, width)`` answers as ``model(x, width)`` in eval mode.

    The compiled widths read the model's own tensors: weights changed in place are seen, tensors replaced (by
    ``.to()``, or assigning new parameters) are not. The model must stay in eval mode, on its device.
    ``seconds[w]`` is what width ``w`` took to compile or load; ``cached[w]`` whether it came from the cache.
    ``close()`` unloads the widths and removes the temporary folder each was unpacked into.
    """

    def __init__(self, model: SlimmableVisionTransformer, widths: Optional[list[float]] = None,
                 cache_dir: Optional[Path] = None, progress: bool = True):
        parameter = next(model.parameters())
        self.device = parameter.device
        check_can_compile(self.device)
        if model.training:
            raise ValueError("compiled widths are for inference: put the model in eval mode (model.eval()) first")
        self.model = model
        self.dtype = parameter.dtype
        self.input_size = torch.Size((model.in_chans, *model.patch_embed.img_size))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        widths = model.widths if widths is None else [model.grid.snap(w) for w in widths]
        self.runners, self.seconds, self.cached = {}, {}, {}
        for width in tqdm(widths, desc='compiling widths', unit='width', disable=not progress):
            start = time.perf_counter()
            self.runners[width], self.cached[width] = self._load(width)
            self.seconds[width] = time.perf_counter() - start

    def _load(self, width: float):
        program = export_program(self.model, tuple(self.input_size), width)
        path = self.cache_dir / f'width-{width:g}-{_cache_key(program, self.device)}.pt2'
        cached = path.is_file()
        if not cached:
            compile_package(program, path, weights=False)
        check_packages_load(path, self.device)
        try:
            runner = torch._inductor.aoti_load_package(str(path))
        except Exception:  # a damaged cache entry (a disk error, a hand-edited cache) is built again
            if not cached:
                raise
            compile_package(program, path, weights=False)
            runner, cached = torch._inductor.aoti_load_package(str(path)), False
        tensors = {f'model.{name}': t for name, t in (*self.model.named_parameters(), *self.model.named_buffers())}
        runner.load_constants({name: tensors[name] for name in runner.get_constant_fqns()},
                              check_full_update=True, user_managed=True)
        return runner, cached

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple(self.runners)

    def __call__(self, x: torch.Tensor, width: Optional[float] = None) -> torch.Tensor:
        # The fast path (a grid width as given, an input of the model's size) costs microseconds: batch 1 at a small
        # width runs in a few hundred.
        runner = self.runners.get(width) if type(width) is float else None
        if runner is None:
            runner = self._runner(width)
        if x.shape[1:] != self.input_size or x.device != self.device or x.dtype != self.dtype:
            self._check(x)
        if len(x) == 0:
            with torch.no_grad():
                return self.model(x, width)
        return self._run(runner, x)

    def _run(self, runner, x: torch.Tensor) -> torch.Tensor:
        # The loader's run takes the flat inputs; the package's __call__ rebuilds its pytree specs on every call.
        if len(x) <= MAX_BATCH:
            return runner.loader.run([x])[0]
        return torch.cat([runner.loader.run([chunk])[0] for chunk in x.split(MAX_BATCH)])

    def close(self) -> None:
        self.runners.clear()  # each loader removes its unpacked package when freed

    def _runner(self, width: Optional[float]):
        width = self.model.grid.largest if width is None else self.model.grid.snap(width)
        if not self.runners:
            raise ValueError("the compiled widths were closed: compile them again")
        if width not in self.runners:
            raise ValueError(f"width {width} was not compiled (compiled: {list(self.runners)}); compile it too")
        return self.runners[width]

    def _check(self, x: torch.Tensor) -> None:
        _checked_input(x, self.model.in_chans, self.model.patch_embed.img_size)
        if x.device != self.device or x.dtype != self.dtype:
            raise ValueError(f"input on {x.device} in {x.dtype}: the compiled widths take {self.dtype} on {self.device}")


class CudaGraphs:
    """``function`` (one input, a batch) replayed as CUDA graphs captured at the batch sizes ``batches``: a call pads
    its batch up to the next captured size, replays, and returns a copy of the rows it asked for; a batch larger than
    every captured size calls ``function``. Replays from any thread, one at a time under ``lock``.

    Captured explicitly rather than by ``torch.compile``'s CUDA graph trees, which record per thread and per batch
    size on first sight: a server's model thread would then record in the middle of serving. The graphs of every width
    share one memory pool and one lock: safe because no two replay at once and each output is copied at once.
    """

    def __init__(self, function, example: torch.Tensor, batches: tuple[int, ...], pool, lock: threading.Lock):
        self.function, self.lock = function, lock
        self.inputs, self.outputs, self.graphs = {}, {}, {}
        for batch in sorted(batches):
            x = example.new_zeros(batch, *example.shape[1:])
            side = torch.cuda.Stream()  # warm-up before capture, on a side stream, as PyTorch's docs do
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    function(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch] = function(x)
            self.inputs[batch], self.graphs[batch] = x, graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = next((b for b in self.graphs if b >= len(x)), None)
        if batch is None:
            return self.function(x)
        with self.lock:
            self.inputs[batch][:len(x)].copy_(x)
            self.graphs[batch].replay()
            return self.outputs[batch][:len(x)].clone()


class JitCompiledWidths(CompiledWidths):
    """The model's widths compiled in this process by ``torch.compile``: ``compiled(x, width)`` answers as
    ``model(x, width)``.

    On the CPU with inductor's C++ wrapper, which releases Python's GIL while it computes: AOTInductor's Python
    binding holds it for the whole forward (docs/compile.md, "Serving"), and a server's HTTP thread would wait as long
    as a batch computes. On CUDA with ``cuda_graphs`` each width is also captured as CUDA graphs at the batch sizes
    ``CUDA_GRAPH_BATCHES`` (``CudaGraphs``), which removes the host's per-kernel launch cost that bounds a small model
    there. One graph per width, its batch dimension unbacked so that every batch size, 1 included, runs the same graph
    (and no call compiles). Inductor caches the built code under ``cache_dir / 'inductor'``: a later start traces
    each width again but builds nothing (``cached[w]`` is always False: the hit is inductor's). The weights are read
    in place, as by ``CompiledWidths``.
    """

    def __init__(self, model: SlimmableVisionTransformer, widths: Optional[list[float]] = None,
                 cache_dir: Optional[Path] = None, progress: bool = True, cuda_graphs: bool = False):
        parameter = next(model.parameters())
        self.pool = torch.cuda.graph_pool_handle() if cuda_graphs and parameter.device.type == 'cuda' else None
        self.replay_lock = threading.Lock()
        super().__init__(model, widths, cache_dir, progress)

    def _load(self, width: float):
        options = {'cpp_wrapper': True} if self.device.type == 'cpu' else {}
        function = torch.compile(AtWidth(self.model, width), fullgraph=True, options=options)
        with torch.inference_mode():
            example = torch.zeros(2, *self.input_size, device=self.device, dtype=self.dtype)
        mark_unbacked(example, 0)
        with temporary_cache_dir(str(self.cache_dir / 'inductor')), one_graph_per_width():
            try:
                self._run(function, example)
                if self.pool is not None:
                    with torch.inference_mode():
                        function = CudaGraphs(function, example, CUDA_GRAPH_BATCHES, self.pool, self.replay_lock)
            except Exception as error:
                first_line = (str(error).strip().splitlines() or [''])[0]
                raise CompileError(f"inductor could not compile width {width:g} ({type(error).__name__}: "
                                   f"{first_line}); run without --compile") from error
        return function, False

    def _run(self, function, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            # Dynamo guards on whether the input is an inference tensor: the server's are, and the graph is built for
            # them; another input is copied (microseconds against the forward) rather than compiled for twice.
            return function(x if x.is_inference() else x.clone())


def compile_widths(model: SlimmableVisionTransformer, widths: Optional[list[float]] = None,
                   cache_dir: Optional[Path] = None, progress: bool = True, serving: bool = False) -> CompiledWidths:
    """The widths compiled as they run best on the model's device. On CUDA in process (``torch.compile``, the widths
    replayed as CUDA graphs): AOTInductor packages crash some torch builds on load there, and eval, pick and serve
    then measure and serve the same compiled widths. On the CPU a server's widths release the GIL
    (``JitCompiledWidths``); eval's and pick's are AOTInductor packages (``CompiledWidths``), which a later start
    loads from the cache in milliseconds."""
    device = next(model.parameters()).device
    if device.type == 'cuda':
        return JitCompiledWidths(model, widths, cache_dir, progress, cuda_graphs=True)
    kind = JitCompiledWidths if serving else CompiledWidths
    return kind(model, widths, cache_dir, progress)
