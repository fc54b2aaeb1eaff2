"""``scalavit train --compile``: the model's forward and backward compiled by ``torch.compile`` at every width,
before the first step."""
import torch
import torch.nn as nn
from tqdm import tqdm

from .compiled import one_graph_per_width


def compile_for_training(module: nn.Module, widths: tuple[float, ...], example: torch.Tensor, autocast,
                         progress: bool = True, mode: str = 'default', regional: bool = False) -> nn.Module:
    """``torch.compile`` of a (possibly DDP-wrapped) slimmable model for training, every width's forward and backward
    compiled here, before the first step.

    Dynamo specialises on the width, so each width is one graph and none recompiles another (the recompile limit is
    raised to hold them all while they compile). Random ops draw as in eager mode (inductor's ``fallback_random``, set
    while the graphs are generated), so a compiled run's losses are the eager run's up to float summation order; the
    warm-up passes leave no gradient and draw nothing from the run's generators.

    ``regional``: each transformer block is compiled in place instead of the whole model (PyTorch's regional
    compilation). The blocks share one graph per width, so compiling costs a fraction of the whole model's; the
    patch embedding and the head stay eager. ``mode='reduce-overhead'`` (CUDA) replays the graphs as CUDA graphs;
    the caller then starts each step with ``torch.compiler.cudagraph_mark_step_begin()``.
    """
    if regional:
        for block in getattr(module, 'module', module).blocks:  # DDP keeps the model as .module
            block.compile(mode=mode)
        compiled = module
    else:
        compiled = torch.compile(module, mode=mode)
    cuda_graphs = mode == 'reduce-overhead'
    devices = [example.device] if example.device.type == 'cuda' else []
    eager_randomness = torch._inductor.config.patch(fallback_random=True)
    with torch.random.fork_rng(devices=devices), one_graph_per_width(), eager_randomness:
        for width in tqdm(widths, desc='compiling widths (forward and backward)', unit='width', disable=not progress):
            for _ in range(2 if cuda_graphs else 1):  # a CUDA graph is recorded on its second pass
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast():
                    output = compiled(example, width)
                    outputs = output if isinstance(output, tuple) else (output,)
                    loss = sum(o.float().mean() for o in outputs)
                loss.backward()
    for parameter in module.parameters():
        parameter.grad = None
    return compiled
