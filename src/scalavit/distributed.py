"""torchrun's processes: which one this is, and the collectives training needs beside DDP's gradient all-reduce."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, value, device: torch.device):
        """``value`` (a number or a tensor) summed over the ranks; as it is when there is one."""
        if not self.enabled:
            return value
        tensor = torch.as_tensor(value, dtype=torch.float64, device=device if device.type == 'cuda' else 'cpu').clone()
        dist.all_reduce(tensor)
        return tensor.cpu() if tensor.dim() else tensor.item()

    def all_agree(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank: for decisions that every rank must take alike (DDP's all-reduces
        pair up only if every rank runs the same steps)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor(int(flag), device=device if device.type == 'cuda' else 'cpu')
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def replicas_identical(self, model: torch.nn.Module) -> bool:
        """Whether every rank holds the same weights (DDP's invariant; a checksum gathered from each)."""
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        position_weights = torch.arange(len(flat), device=flat.device) % 7919 + 1
        checksum = torch.stack([flat.sum(), (flat * position_weights).sum()])
        gathered = [torch.zeros_like(checksum) for _ in range(self.world_size)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(gathered[0], other) for other in gathered[1:])

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def setup_distributed(device: str) -> Distributed:
    """torchrun's environment: NCCL on CUDA, gloo on the CPU."""
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return Distributed()
    ddp = Distributed(int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), int(os.environ['LOCAL_RANK']))
    if device.startswith('cuda'):
        torch.cuda.set_device(ddp.local_rank)
    dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo')
    return ddp
