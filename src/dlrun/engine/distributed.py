"""Data-parallel training under torchrun: process group, ranks, sharding of the epoch's order, metric reduction.

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE; everything here
reads those and is a no-op in an ordinary single process. Every rank shuffles the same permutation of the
training samples (same seed) and takes its own slice of each global batch, so a checkpoint's saved order
and batch counter mean the same thing for any number of processes, and exact mid-epoch resume still holds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# torch is imported where it is used: the CLI imports this module, and `dl-run --help` must not wait for torch.
if TYPE_CHECKING:
    import torch
    from torch import nn

# A rank that waits longer than this in a collective gives up with an error instead of hanging for ever.
# torchrun itself stops the other ranks as soon as one exits with an error; this bounds what it cannot see.
TIMEOUT = timedelta(seconds=int(os.environ.get("DLRUN_DIST_TIMEOUT_S", "300")))


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank, 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its own machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, checkpoints and TensorBoard."""
    return rank() == 0


def launched() -> bool:
    """Under torchrun with more than one process."""
    return world_size() > 1


def setup() -> None:
    """Join the process group torchrun described (gloo for CPU tensors, NCCL for CUDA ones when there is a GPU)."""
    if not launched():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def teardown() -> None:
    """Leave the process group (at the end of the process)."""
    if "torch.distributed" not in sys.modules:
        return  # nothing imported it, so no process group was joined
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def end_worker() -> None:
    """End a rank other than 0 once its work is done, without Python's interpreter shutdown.

    A worker that finished training exits at once (rank 0 still scores and writes the run). Under gdb, in about
    1 two-process run in 8 on a loaded 2-core machine, Python's shutdown met a gloo run-loop thread still
    busy from the last collective: CPython ends a thread that takes the GIL while it finalises, and unwinding
    gloo's C++ frames then calls std::terminate ("terminate called without an active exception", SIGABRT), and
    torchrun failed the whole job. A worker writes nothing that shutdown would flush (its scratch run directory
    is already removed), so it flushes its streams and leaves with status 0."""
    if not launched() or is_main():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def device_for(device: torch.device, gpus: int | None = None) -> torch.device:
    """Each rank on its own GPU: `cuda` becomes cuda:<local rank> (`gpus`: how many this machine shows, else asked)."""
    if not launched() or device.type != "cuda":
        return device
    import torch

    check_placement(str(device), int(os.environ.get("LOCAL_WORLD_SIZE", world_size())),
                    torch.cuda.device_count() if gpus is None else gpus)
    return torch.device("cuda", local_rank())


def check_placement(device: str, processes: int, gpus: int) -> None:
    """Refuse what would put data-parallel processes on GPUs wrongly: an explicit cuda:N (every rank would use GPU N
    while torch.cuda.set_device takes the local rank's), or more processes on this machine than it has GPUs
    ("invalid device ordinal" otherwise, after the processes started)."""
    from dlrun.errors import ConfigError

    if device.startswith("cuda:"):
        raise ConfigError(f"'trainer.device={device}' with {processes} processes: each process takes the GPU of its "
                          f"local rank, so name no index: use trainer.device=cuda (or auto), and CUDA_VISIBLE_DEVICES "
                          f"to choose which GPUs the processes see.", key="trainer.device")
    if processes > gpus:
        raise ConfigError(f"'trainer.devices={processes}' on a machine with {gpus} visible GPU(s): each process "
                          f"trains on its own GPU. Use trainer.devices={max(gpus, 1)} or fewer (CUDA_VISIBLE_DEVICES "
                          f"says which GPUs are visible), or trainer.device=cpu for processes on the CPU.",
                          key="trainer.devices")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when several processes train it, else the model itself."""
    if not launched():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's slice of one global batch of sample indices (the slices of all ranks make up the batch)."""
    if not launched():
        return batch
    return batch.tensor_split(world_size())[rank()]


def usable_batches(batches: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The global batches every rank gets a sample of: a last batch smaller than the world is left out."""
    if launched() and batches and len(batches[-1]) < world_size():
        return batches[:-1]
    return batches


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (the tensor itself in a single process)."""
    if not launched():
        return value
    import torch.distributed as dist

    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: ranks take the same decision (stop, give up) at the same step."""
    if not launched():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's value of a picklable object, in rank order, on every rank ([obj] in a single process)."""
    if not launched():
        return [obj]
    import torch.distributed as dist

    box: list[Any] = [None] * world_size()
    dist.all_gather_object(box, obj)
    return box


def broadcast(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if not launched():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def forward_shared(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """forward(batch) over the rows of x, every rank calling it together: each computes a contiguous share of
    the outputs and all receive all of them, in order. Validation then costs each rank 1/world of the forward
    passes; in a single process (or with fewer rows than ranks) it is the plain loop."""
    import torch

    if not launched() or len(x) < world_size():
        return torch.cat([forward(xb) for xb in x.split(batch_size)])
    import torch.distributed as dist

    shares = x.tensor_split(world_size())  # sizes differ by at most one: the first ones are the longer
    mine = torch.cat([forward(xb) for xb in shares[rank()].split(batch_size)]).float()  # gloo: no bf16
    padded = mine.new_zeros((len(shares[0]), *mine.shape[1:]))
    padded[:len(mine)] = mine
    pieces = [torch.empty_like(padded) for _ in shares]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:len(share)] for piece, share in zip(pieces, shares)])


def share_of(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of the rows of x, for work summed over ranks afterwards (sum_over_ranks)."""
    if not launched():
        return x
    if len(x) < world_size():
        return x if is_main() else x[:0]  # too few rows to share: rank 0 takes them all
    return x.tensor_split(world_size())[rank()]


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over all ranks (the tensor itself in a single process)."""
    if not launched():
        return value
    import torch.distributed as dist

    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, so evaluation agrees everywhere."""
    if not launched():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def job_device(device: str, job_num: int) -> str:
    """A sweep job in a launcher's worker on a machine with several GPUs: its own GPU, taken in turn."""
    import torch

    count = torch.cuda.device_count()
    if device in ("auto", "cuda") and count > 1 and not launched():
        return f"cuda:{job_num % count}"
    return device


def worker_arguments() -> list[str]:
    """Hydra overrides for ranks other than 0: a throw-away run directory and no files in it.

    Hydra creates its run directory before the app starts; only rank 0's is kept, and the
    others learn its path from rank 0 (see cli.py).
    """
    if not launched() or is_main():
        return []
    scratch = tempfile.mkdtemp(prefix=f"dlrun-rank{rank()}-")
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=none",
            "hydra/hydra_logging=none"]


def launch(devices: int, argv: list[str]) -> None:
    """`dl-run trainer.devices=N`: start N processes with torchrun on this machine, each running dl-run."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    device = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("trainer.device=")), "auto")
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        check_placement(device, devices, torch.cuda.device_count())  # before any process starts
    try:
        torchrun(["--standalone", f"--nproc_per_node={devices}", "-m", "dlrun", *argv])
    except ChildFailedError:
        sys.exit(1)  # torchrun has printed which rank failed first, and stopped the others
    sys.exit(0)
