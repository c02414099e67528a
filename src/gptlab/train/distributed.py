"""Several processes through PyTorch distributed: torchrun starts them, this module joins them.

`torchrun --nproc_per_node=N -m gptlab train ...` sets RANK, WORLD_SIZE and LOCAL_RANK in each
process's environment; gptlab then joins the process group (nccl between GPUs, gloo on CPU) and
wraps the model in DistributedDataParallel, or shards it with fully_shard (FSDP) when asked.
Multi-node runs are the same command with torchrun's rendezvous flags on every node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.model.layers import Block


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks to synchronise with."""
        return self.world_size > 1


def setup(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group when launched by torchrun with several processes; pick the device.

    Under torchrun each process takes the GPU of its local rank ("auto" and "cuda" both mean
    that); on CPU the processes share the cores (torchrun gives each one thread by default).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), pick_device(device_name)
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    wanted = pick_device(device_name)
    if wanted.type == "mps":
        raise GptlabError("several processes need cuda or cpu; MPS has no distributed backend")
    if wanted.type == "cuda":
        if wanted.index not in (None, ranks.local_rank):
            raise GptlabError(
                f"device '{device_name}' conflicts with torchrun: each process uses "
                "the GPU of its local rank (use device=cuda or auto)"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = wanted
        dist.init_process_group("gloo")
    return ranks, device


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sum of small lists of numbers over all ranks (identity on one process)."""
    if not ranks.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, ranks: Ranks, device: torch.device, fsdp: bool) -> nn.Module:
    """The module to train: DDP around the model, or the model sharded in place (FSDP).

    FSDP shards each Transformer block as a unit (its parameters are gathered just before it
    runs and freed after): the GPT's blocks, or the encoder's and the decoder's; then the root
    (embeddings, tied unembedding, final norms).
    """
    if fsdp:
        if not ranks.distributed:
            raise GptlabError(
                "fsdp=true shards the model across processes: launch with torchrun --nproc_per_node=N (N >= 2)"
            )
        from torch.distributed.fsdp import fully_shard

        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(model)
        return model
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
