"""Data-parallel training: one code path for one process, ``torchrun`` processes and TrainJobs.

``torchrun`` (locally, in a pod, or in a Kubeflow Trainer TrainJob, whose ``torch-distributed``
runtime starts it) sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address;
:func:`init_from_env` joins that process group (NCCL when the process has a GPU, Gloo on CPU)
and :func:`components.train.core.fit` then wraps the model in DDP and draws its batches from
:func:`epoch_sampler`. Without those variables nothing is initialised and the same code runs as
one process (world size 1), with exactly the batches, random draws and results it always had.

The global batch is ``HParams.batch_size``: each of ``W`` processes takes every ``W``-th image
of the same shuffled epoch (:class:`torch.utils.data.DistributedSampler`'s split), so a step of
``W`` processes sees the same images as one step of one process; DDP averages the gradients.
Every rank starts from the same seed (the same initial weights and the same epoch order), rank
0 writes the model.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: How long a process waits for the others (rendezvous, a collective) before failing.
TIMEOUT_S = float(os.environ.get("MLOPS_DDP_TIMEOUT_S", "600"))


@dataclass(frozen=True)
class Dist:
    """Where this process stands in its process group (world size 1: no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the model and the artifacts; the others only train."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    def device(self):
        """``cuda:<local rank>`` where there is a GPU, else the CPU."""
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def env_world() -> Dist:
    """The process's place as ``torchrun`` describes it in the environment."""
    return Dist(rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init_from_env() -> Dist:
    """Joins the process group ``torchrun`` set up (NCCL on GPU, Gloo on CPU); a no-op for a
    single process. Returns :func:`current`."""
    import torch
    import torch.distributed as dist

    env = env_world()
    if env.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.device())
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        logger.info("Rank %d of %d joined the %s process group (%d node(s))", env.rank,
                    env.world_size, backend, env.nodes)
    return current()


def current() -> Dist:
    """This process's :class:`Dist`: from the initialised process group, else world size 1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    env = env_world()
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=env.local_rank, local_world_size=env.local_world_size,
                backend=dist.get_backend())


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every rank (nothing to wait for in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device=None) -> list[float]:
    """Element-wise sums over the ranks (the values themselves in one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model) -> None:
    """Gives every rank rank 0's buffers (BatchNorm statistics, updated locally by each rank's
    last forward pass), so all ranks validate, and rank 0 saves, one model."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def epoch_sampler(n: int, seed: int, num_replicas: int = 1, rank: int = 0):
    """An :class:`EpochSampler` (the class is made on first use: torch is imported then)."""
    return _sampler_class()(n, seed, num_replicas, rank)


@functools.cache
def _sampler_class():
    from torch.utils.data import DistributedSampler

    class EpochSampler(DistributedSampler):
        """:class:`~torch.utils.data.DistributedSampler` over the rows of the memory-mapped
        shards, with the epoch order drawn as the single-process training always drew it.

        One ``torch.Generator`` seeded with the training seed gives each epoch's permutation
        in turn (the same on every rank); the sampler then pads it to a multiple of the world
        size and gives this rank every ``world_size``-th index, as ``DistributedSampler``
        does. With world size 1 the order is exactly the one-process order.
        """

        def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0):
            import torch

            super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True,
                             seed=seed, drop_last=False)
            self._gen = torch.Generator().manual_seed(seed)
            self._drawn: dict[int, list[int]] = {}

        def _permutation(self) -> list[int]:
            """The epoch's order; epochs are drawn in sequence from the one generator."""
            import torch

            while self.epoch not in self._drawn:
                self._drawn[len(self._drawn)] = torch.randperm(len(self.dataset),
                                                               generator=self._gen).tolist()
            return self._drawn[self.epoch]

        def __iter__(self) -> Iterator[int]:
            indices = list(self._permutation())
            padding = self.total_size - len(indices)
            if padding > 0:  # as DistributedSampler: repeat from the start, all ranks step alike
                indices += (indices * (padding // max(1, len(indices)) + 1))[:padding]
            mine = indices[self.rank:self.total_size:self.num_replicas]
            assert len(mine) == self.num_samples
            return iter(mine)

    return EpochSampler
