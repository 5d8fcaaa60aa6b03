"""Several processes training one adapter through torch.distributed: what a rank does differently from a single
process, in one place. torchrun's elastic agent starts the ranks (core/training/launcher.py); each one calls
`join_world` first, and the loop asks `current_world()` who it is (rank 0 of 1 outside torchrun).

    join_world()       the process group: gloo on the CPU, NCCL on CUDA (one GPU per rank, LOCAL_RANK), with a
                       timeout on every collective, so a dead rank ends the others instead of hanging them; a CPU
                       rank takes its share of the cores
    World.share        which share of every global batch this rank trains (core.data.batch.share_of)
    World.total        sums over the ranks (trained tokens, the loss, each rank's memory): tiny all-reduces
    Replicas           how the ranks share one optimizer step:
                         ddp   every rank holds the whole frozen base; DistributedDataParallel over the decoder
                               all-reduces only the adapter's gradients, summed, once per step (no_sync while
                               accumulating): adapter parameters x 4 bytes a step, a few MB
                         fsdp  FSDP2 `fully_shard` per decoder layer: the frozen base sharded across the ranks
                               (each layer's weights gathered for its passes only); the adapter stays whole on
                               every rank (FSDP ignores it) and its gradients are all-reduced, summed, as with ddp
    shared_checkpoint  rank 0 reads a checkpoint's files and sends them to every rank, so nodes need no shared disk

Each micro-batch's loss is divided by the trained tokens of the whole global batch (all ranks), and gradients are
summed, not averaged: N ranks compute the gradient one process would, so they train the same adapter. Every rank
applies the same update, so the replicas stay equal; rank 0 alone writes.
"""

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.distributed as dist
from torch import nn

from core.errors import LoraForgeError
from core.training.config import STRATEGIES

TIMEOUT_SETTING = "LORAFORGE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600  # longest a rank waits in a collective: rank 0 samples and checkpoints while others wait


class DistributedError(LoraForgeError):
    """A distributed run cannot go ahead as set up (a strategy this base or backend cannot use)."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: str = "auto"  # the device this rank trains on (its own GPU on CUDA)

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes metrics, samples, checkpoints and the adapter."""
        return self.rank == 0

    @property
    def share(self) -> tuple[int, int]:
        return self.rank, self.size

    def total(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64, so token counts stay exact)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def each(self, value: float) -> list[float]:
        """Every rank's `value`, in rank order."""
        slots = [0.0] * self.size
        slots[self.rank] = value
        return self.total(*slots)


def check_devices(nproc: int, device: str) -> None:
    """Refuse more processes than GPUs before any starts (on the CPU, any number may share the cores)."""
    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise DistributedError(f"--nproc {nproc} needs {nproc} GPUs (one per process); this machine has {gpus}. "
                               f"Use --nproc {gpus}, or --device cpu.")


def default_processes() -> int:
    """How many processes a run uses unless told: one per GPU on CUDA, one on a CPU (several would share its cores)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def process_choices() -> list[int]:
    """Sensible process counts on this machine: 1 to the number of GPUs, or to the number of CPU cores."""
    most = torch.cuda.device_count() if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    return list(range(1, max(most, 1) + 1))


def current_world() -> World:
    """The running process group's view of this process; a lone process is rank 0 of 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local_rank}" if dist.get_backend() == "nccl" else "cpu"
    return World(dist.get_rank(), dist.get_world_size(), local_rank,
                 int(os.environ.get("LOCAL_WORLD_SIZE", 1)), device)


def join_world(device: str) -> World:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR in the environment): NCCL on CUDA,
    gloo on the CPU (`device` is the run's setting: auto, cpu, cuda). Every collective times out after
    LORAFORGE_DIST_TIMEOUT seconds (600 by default)."""
    cuda = device != "cpu" and torch.cuda.is_available()
    local_rank, local_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"{local_size} processes on this machine need {local_size} GPUs; it has "
                                   f"{torch.cuda.device_count()}. Use --nproc {torch.cuda.device_count()}.")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_size))  # no rank fights another
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=collective_timeout()),
                            device_id=torch.device("cuda", local_rank) if cuda else None)
    return current_world()


def check_same_settings(world: World, settings: dict) -> None:
    """Refuse to train when ranks were started with other settings than rank 0's (a machine of a multi-node run
    given another command line): they would train another batch, silently. A 48-bit digest of each rank's settings
    is compared, in one small collective."""
    text = json.dumps(settings, sort_keys=True, default=str).encode()
    digests = world.each(float(int(hashlib.sha256(text).hexdigest()[:12], 16)))
    differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differing:
        raise DistributedError(f"Rank(s) {', '.join(map(str, differing))} were started with other settings than rank "
                               "0: run the same command, with the same dataset and base paths, on every machine "
                               "(only --node-rank differs).")


def leave_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def collective_timeout() -> float:
    value = os.environ.get(TIMEOUT_SETTING, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise DistributedError(f"{TIMEOUT_SETTING} is {value!r}; give the seconds a rank may wait for the others "
                               f"(e.g. {DEFAULT_TIMEOUT_S}).")
    return seconds


class Replicas:
    """The model as the ranks train it together (see the module docstring); alone, the model itself.

    `decoder` is what the loss runs (core.training.loss.trained_token_loss); `syncing(last)` wraps each
    micro-batch's passes, so gradients are exchanged once per optimizer step, after its last micro-batch;
    `reduced_bytes` counts what was all-reduced. `sharded`: every rank must take part in every forward pass
    (evaluation and samples too), since each holds only a part of the base."""

    def __init__(self, model: nn.Module, world: World, strategy: str, static_graph: bool = False):
        self.world = world
        self.decoder = model.base_model
        self.reduced_bytes = 0
        self.sharded = False
        self._ddp: nn.Module | None = None
        self._adapter = [p for p in model.parameters() if p.requires_grad]
        if not (dist.is_available() and dist.is_initialized()):  # alone; a group of one still wraps (bench/)
            return
        for parameter in self._adapter:  # the same adapter on every rank, whatever each one drew
            dist.broadcast(parameter.data, 0)
        if strategy == "fsdp":
            _shard_base(model, world, set(self._adapter))
            self.sharded = True
        elif strategy == "ddp":
            cuda = world.device.startswith("cuda")
            self._ddp = nn.parallel.DistributedDataParallel(
                model.base_model, device_ids=[world.local_rank] if cuda else None, forward_sync_buffers=False,
                init_sync=False, static_graph=static_graph)
            self._ddp.register_comm_hook(self, _summed_all_reduce)
            self.decoder = self._ddp
        else:
            raise DistributedError(f"strategy is {strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
        self._base_mb = world.each(_held_base_bytes(model) / 2**20)

    def figures(self, memory_mb: float) -> dict:
        """What a metrics row adds for several ranks (a collective: every rank calls it): the world size, each
        rank's peak memory and the frozen weights it holds, and the bytes all-reduced since the last row."""
        if self.world.size == 1:
            return {}
        sent, self.reduced_bytes = self.reduced_bytes, 0
        return {"world_size": self.world.size, "rank_memory_mb": self.world.each(memory_mb), "allreduce_bytes": sent,
                "rank_base_mb": self._base_mb}

    @contextmanager
    def own_randomness(self, seed: int, step: int) -> Iterator[None]:
        """Rank r > 0 draws a step's dropout from a generator seeded by (seed, rank, step), so ranks do not repeat rank
        0's masks, and a resumed run draws what the uninterrupted one did (rank 0's state is the checkpoint's)."""
        if self.world.rank == 0:
            yield
            return
        cuda = [torch.cuda.current_device()] if self.world.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed((seed * 1_000_003 + self.world.rank) * 1_000_003 + step)
            yield

    @contextmanager
    def syncing(self, last: bool) -> Iterator[None]:
        """Gradients are exchanged in the last micro-batch's backward pass only (no_sync before it)."""
        with self._ddp.no_sync() if self._ddp is not None and not last else nullcontext():
            yield
        if self.sharded and last:
            self._sum_adapter_gradients()

    def _sum_adapter_gradients(self) -> None:
        """The adapter's gradients summed over the ranks in one flat all-reduce (FSDP leaves them to us)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._adapter]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        self.reduced_bytes += flat.numel() * flat.element_size()
        for parameter, summed in zip(self._adapter, flat.split([grad.numel() for grad in grads])):
            parameter.grad = summed.view_as(parameter)


def _held_base_bytes(model: nn.Module) -> int:
    """Bytes of frozen weights this rank holds: its shards only, under FSDP."""
    held = 0
    for parameter in model.parameters():
        if not parameter.requires_grad:
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            held += local.numel() * local.element_size()
    return held


def _shard_base(model: nn.Module, world: World, adapter: set[nn.Parameter]) -> None:
    """FSDP2 over each decoder layer, the adapter left out: the frozen base is what does not fit one device. The
    embeddings and the head stay whole (tied models share them, and the chunked loss reads the head directly)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise DistributedError(f"--strategy fsdp shards a decoder's layers, and {type(model).__name__} has no "
                               "`layers` list; use --strategy ddp.")
    if any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters()):
        raise DistributedError("--strategy fsdp cannot shard bitsandbytes' 4-bit or 8-bit weights (they are not "
                               "tensors FSDP can split); use --strategy ddp with --quant nf4, where each process "
                               "holds the 4-bit base, or --strategy fsdp with --quant none.")
    mesh = init_device_mesh("cuda" if world.device.startswith("cuda") else "cpu", (world.size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True,  # each layer is a root: say so
                    ignored_params={p for p in layer.parameters() if p in adapter})
    # FSDP keeps each layer's gathered weights in tensors made at its first pass; made under inference_mode (an
    # evaluation, a sample) they could never take part in a backward pass again, so the first pass is made here.
    with torch.no_grad():
        model.base_model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device), use_cache=False)


def _summed_all_reduce(replicas: Replicas, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce, summing instead of averaging (the loss is already divided by the global token count);
    it counts the bytes it sends."""
    buffer = bucket.buffer()
    replicas.reduced_bytes += buffer.numel() * buffer.element_size()
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda done: done.value()[0])


@contextmanager
def shared_checkpoint(world: World, folder: Path | None) -> Iterator[Path | None]:
    """Rank 0's checkpoint `folder` (None: no checkpoint) on every rank: rank 0 sends the files (an adapter's
    size), the others read them from a temporary copy; what other ranks pass is ignored."""
    if world.size == 1:
        yield folder
        return
    device = _collective_device()
    packed = _pack_folder(folder) if world.writer and folder is not None else b""
    size = torch.tensor([len(packed) if world.writer and folder is not None else -1], device=device)
    dist.broadcast(size, 0)
    if size.item() < 0:
        yield None
        return
    data = torch.frombuffer(bytearray(packed), dtype=torch.uint8).to(device) if world.writer else \
        torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, 0)
    if world.writer:
        yield folder
        return
    with TemporaryDirectory(prefix="loraforge-checkpoint-") as scratch:
        yield _unpack_folder(data.cpu().numpy().tobytes(), Path(scratch) / folder_name(folder))


def folder_name(folder: Path | None) -> str:
    return folder.name if folder is not None else "checkpoint"


def _pack_folder(folder: Path) -> bytes:
    """The folder's files as one blob: a JSON index of relative paths and sizes, then their bytes."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    contents = [path.read_bytes() for path in files]
    index = json.dumps([[str(path.relative_to(folder)), len(body)] for path, body in zip(files, contents)]).encode()
    return len(index).to_bytes(8, "little") + index + b"".join(contents)


def _unpack_folder(blob: bytes, folder: Path) -> Path:
    stream = io.BytesIO(blob)
    index = json.loads(stream.read(int.from_bytes(stream.read(8), "little")))
    for name, length in index:
        target = folder / name
        if folder.resolve() not in target.resolve().parents:
            raise DistributedError(f"Rank 0 sent a checkpoint file outside its folder ({name}).")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(stream.read(length))
    return folder


def _collective_device() -> torch.device:
    """Where collective tensors live: the rank's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
