"""Data-parallel ia-train: one process per device, started by torchrun (or any launcher that sets the
torch.distributed environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

- Parameters, gradients and optimiser state are sharded with FSDP2 (`fully_shard`) over gloo on CPU
  and nccl on GPU. The whole policy is one FSDP unit (models.Policy): every model call the loop
  makes (generate, the hidden states and the LM-head weight for the loss) is one forward of that
  unit, so FSDP gathers the full parameters around it and reduce-scatters (averages) the gradients.
- A step's prompts_per_step prompts are the same whatever the number of processes; each rank takes a
  contiguous block of them (all n samples of a prompt on one rank, so the group advantages are
  local), and samples with its own seed.
- The loss is normalised by global counts: see `global_scale`.
- Evaluation splits the held-out problems across ranks and gathers the per-problem results.
- Rank 0 alone writes logs, plots, the summary and the single files of a checkpoint; the model and
  optimiser state go through torch.distributed.checkpoint (checkpoint.py), so a run resumes on any
  number of processes, including one without torchrun.

A single process without the launcher's environment runs without torch.distributed at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, and whether torch.distributed is in use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # started by a launcher (even with one process): FSDP, DCP checkpoints

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def launcher_env(env=None) -> Dist | None:
    """The launcher's settings, None when none is set (a plain single process); ConfigError (one line,
    naming the variables) when they are incomplete or inconsistent."""
    env = os.environ if env is None else env
    given = {name: env.get(name) for name in LAUNCHER_VARS if env.get(name) not in (None, "")}
    if not any(name in given for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    missing = [name for name in LAUNCHER_VARS if name not in given]
    if missing:
        shown = ", ".join(f"{k}={v}" for k, v in given.items())
        raise ConfigError(f"inconsistent torch.distributed environment: {shown} set but {', '.join(missing)} "
                          f"missing; start ia-train with torchrun (or unset {', '.join(given)} for one process)")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            values[name] = int(given[name])
        except ValueError:
            raise ConfigError(f"inconsistent torch.distributed environment: {name}={given[name]!r} is not an "
                              "integer; start ia-train with torchrun") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torch.distributed environment: RANK={rank}, WORLD_SIZE={world}, "
                          f"LOCAL_RANK={local} (need 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0); "
                          "start ia-train with torchrun")
    local_world = env.get("LOCAL_WORLD_SIZE")
    if local_world not in (None, "") and (not local_world.isdigit() or not local < int(local_world) <= world):
        raise ConfigError(f"inconsistent torch.distributed environment: LOCAL_RANK={local}, "
                          f"LOCAL_WORLD_SIZE={local_world}, WORLD_SIZE={world} (need LOCAL_RANK < LOCAL_WORLD_SIZE "
                          "<= WORLD_SIZE); start ia-train with torchrun")
    return Dist(rank, world, local, True)


def check(cfg) -> None:
    """ConfigError when the settings do not split across the launcher's processes."""
    d = launcher_env()
    if d is None:
        return
    if cfg.prompts_per_step % d.world_size:
        raise ConfigError(f"--prompts-per-step {cfg.prompts_per_step} does not split across {d.world_size} processes; "
                          f"give a multiple of {d.world_size} (each process takes the same number of prompts)")
    local = cfg.prompts_per_step // d.world_size * cfg.n
    if local % (cfg.minibatches * cfg.grad_accum):
        raise ConfigError(f"each of the {d.world_size} processes holds {local} sequences per step (prompts_per_step / "
                          f"processes * n), which do not split into minibatches * grad_accum = "
                          f"{cfg.minibatches * cfg.grad_accum} equal parts; change one of them")
    if d.world_size > 1 and cfg.device != "cpu" and torch.cuda.is_available() \
            and d.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={d.local_rank} but this node has {torch.cuda.device_count()} CUDA devices; "
                          "start at most one process per device (torchrun --nproc-per-node)")


def pick_device(name: str) -> torch.device:
    """The device --device names for a single process: auto is cuda when one is visible, else cpu
    ("cuda" without a visible device is refused before, by the run's checks)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> None:
    """ConfigError when --device names a device this machine does not have."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")


def init(device_name: str, rendezvous_seconds: float = 300.0) -> tuple[Dist, torch.device]:
    """Joins the process group when a launcher started this process; (Dist, this process's device).
    Every process waits at most `rendezvous_seconds` for the others to start (a launcher that set
    WORLD_SIZE=2 but started one process would otherwise hang for torch's 30 minutes); then
    ConfigError names what is missing."""
    import torch.distributed as dist

    d = launcher_env()
    cuda = pick_device(device_name).type == "cuda"
    if d is None:
        return SINGLE, pick_device(device_name)
    device = torch.device("cuda", d.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        store = _rendezvous(d, rendezvous_seconds)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=d.rank, world_size=d.world_size,
                                device_id=device if cuda else None)
    return d, device


def _rendezvous(d: Dist, seconds: float):
    """The TCP store every rank meets at, made as torch's env:// rendezvous makes it (under torchrun
    the launcher's agent hosts it, else rank 0, which waits for every rank to connect), but waiting
    `seconds` at most; later store operations get torch's default timeout back."""
    from datetime import timedelta

    import torch.distributed as dist

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        store = dist.TCPStore(host, port, d.world_size, is_master=d.rank == 0 and not agent,
                              timeout=timedelta(seconds=seconds), multi_tenant=True)
    except (RuntimeError, dist.DistError) as e:
        raise ConfigError(f"torch.distributed: rank {d.rank} of WORLD_SIZE={d.world_size} did not meet the other "
                          f"processes at MASTER_ADDR={host} MASTER_PORT={port} within {seconds:g} s "
                          f"({' '.join(str(e).split())[:120]}); start all {d.world_size} processes (torchrun "
                          "--nproc-per-node N) or unset the launcher variables to run one process") from None
    store.set_timeout(timedelta(minutes=30))
    return store


def require_same(values: dict, d: Dist, what: str = "setting") -> None:
    """ConfigError naming the first of `values` that differs between ranks, with both ranks' values:
    one all_gather of small objects up front, instead of a collective that aborts or hangs later."""
    if not d.enabled or d.world_size == 1:
        return
    import torch.distributed as dist

    every: list = [None] * d.world_size
    dist.all_gather_object(every, values)
    for name in values:
        for rank, theirs in enumerate(every):
            if theirs.get(name) != every[0].get(name):
                raise ConfigError(f"the processes disagree on the {what} {name}: rank 0 has {every[0].get(name)!r}, "
                                  f"rank {rank} has {theirs.get(name)!r}; start every rank with the same settings")


def shutdown(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# the model


def shard(policy, d: Dist, device: torch.device):
    """FSDP2 over all ranks, one unit: parameters, gradients and optimiser state sharded between
    forwards. reshard_after_forward=False keeps the gathered parameters until `gathered` (or the
    backward pass) lets them go, so that ranks may run different numbers of forwards (generation,
    evaluation on uneven blocks) without mismatched collectives."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (d.world_size,))
    fully_shard(policy, mesh=mesh, reshard_after_forward=False)
    return policy


class gathered:
    """`with gathered(policy):` full parameters on every rank for a stretch of forwards without
    gradients (generation, old log-probs, evaluation): one all-gather before, resharded after."""

    def __init__(self, policy):
        self.policy = policy
        self.fsdp = hasattr(policy, "unshard") and hasattr(policy, "reshard")

    def __enter__(self):
        if self.fsdp:
            self.policy.unshard()
        return self.policy

    def __exit__(self, *exc):
        if self.fsdp:
            self.policy.reshard()
        return False


# ------------------------------------------------------------------------------------------------
# the batch and the loss


def my_block(items: list, d: Dist) -> list:
    """This rank's contiguous block of `items` (blocks differ in size by at most one)."""
    n, w = len(items), d.world_size
    start = d.rank * (n // w) + min(d.rank, n % w)
    return items[start:start + n // w + (1 if d.rank < n % w else 0)]


def rank_seed(seed: int, d: Dist) -> int:
    """A sampling seed per rank; rank 0 keeps `seed`, so one process samples as without a launcher."""
    return (seed + d.rank * 0x9E3779B97F4A7C15) % 2**63


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """The element-wise sum over ranks (float64 on CPU, exact for counts)."""
    if not d.enabled or d.world_size == 1:
        return values
    import torch.distributed as dist

    out = values.detach().to(torch.float64, copy=True).cpu()
    if dist.get_backend() == "nccl":
        out = out.cuda()
    dist.all_reduce(out)
    return out.cpu()


def global_scale(local_count: torch.Tensor, global_count: torch.Tensor, d: Dist) -> torch.Tensor:
    """The factor that turns a rank's locally normalised loss into its share of the global one.

    `linear_ppo_loss` divides by the rank's own count (valid tokens for token-mean, sequences with a
    valid token for the seq-mean aggregations); FSDP averages gradients over ranks. So rank r's loss
    L_r = S_r / c_r, multiplied by world_size * c_r / C (C = sum of c_r), makes the averaged gradient
    (1/W) sum_r W c_r / C grad(S_r / c_r) = grad(sum_r S_r / C): the loss of the global batch. With
    one process the factor is exactly 1."""
    if not d.enabled or d.world_size == 1:
        return torch.ones_like(local_count, dtype=torch.float64)
    return torch.where(global_count > 0, local_count * d.world_size / global_count.clamp(min=1),
                       torch.zeros_like(global_count))


def mean_over_ranks(stats: dict, d: Dist) -> dict:
    """Each number averaged over the ranks (for the log; ranks hold equal-sized batches)."""
    if not d.enabled or d.world_size == 1 or not stats:
        return stats
    keys = sorted(stats)
    sums = all_sum(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64), d)
    return {k: float(v) / d.world_size for k, v in zip(keys, sums.tolist())}


def gather_lists(items: list, d: Dist) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not d.enabled or d.world_size == 1:
        return items
    import torch.distributed as dist

    parts: list = [None] * d.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast(value, d: Dist):
    """Rank 0's value on every rank."""
    if not d.enabled or d.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, d: Dist) -> bool:
    return bool(all_sum(torch.tensor([1.0 if flag else 0.0]), d)[0] > 0)


def barrier(d: Dist) -> None:
    if d.enabled and d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def grad_norm_value(norm) -> float:
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
