"""Everything a training run is made of, in one dataclass that round-trips through YAML.

Every run writes its fully resolved config to `run_dir/config.yaml`, so `train --config` reproduces it
and `resume` needs nothing else.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import LoraForgeError
from core.files import read_text_capped
from core.models.devices import DTYPES
from core.models.quantize import QUANTIZATIONS

MAX_CONFIG_BYTES = 1 << 20  # a run.yaml is a few KB; anything near this is not one
FLOAT_SETTINGS = ("epochs", "lr", "alpha", "max_grad_norm", "weight_decay", "dropout", "eval_share", "warmup_ratio",
                  "beta", "orpo_lambda")
# Upper bounds far beyond any real run, so a typo (1e9 epochs, rank 100000) is refused rather than planned for
# years; the lower bounds the checks below give with their own advice.
UPPER_BOUNDS = {
    "rank": (4096, "8 to 64 is usual"),
    "alpha": (1e5, "2 x rank is a common choice"),
    "epochs": (1000, "1 to 5 is usual"),
    "max_steps": (10_000_000, "or leave it out to train by epochs"),
    "batch_size": (4096, "raise grad_accum for a larger effective batch"),
    "grad_accum": (65536, "1 to 32 is usual"),
    "max_len": (1 << 20, "512 to 4096 is typical"),
    "save_every": (10_000_000, "steps between checkpoints"),
    "eval_every": (10_000_000, "steps between evaluations"),
    "keep_checkpoints": (1000, "2 is usual"),
    "nproc": (1024, "one per GPU, or a few on a CPU"),
    "sample_max_new_tokens": (4096, "64 is usual"),
}

SCHEDULES = ("cosine", "linear", "constant")
STRATEGIES = ("ddp", "fsdp")
METHODS = ("sft", "dpo", "orpo")  # supervised answers, or preference pairs (prompt, chosen, rejected)
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw")
MIN_MAX_LEN = 8


class ConfigError(LoraForgeError):
    """A training setting is missing, unknown or out of range."""


@dataclass
class TrainConfig:
    # What to train on
    base: str = "default"
    dataset: str = ""
    eval_file: str | None = None
    eval_share: float = 0.1  # held out from the dataset when no eval_file is given; 0 for none
    name: str | None = None
    method: str = "sft"  # sft, or dpo / orpo on a preference dataset (core.training.preference)
    beta: float = 0.1  # DPO: how far the policy may move from the reference (the base with the adapter off)
    orpo_lambda: float = 0.1  # ORPO: weight of the odds-ratio term next to the chosen answers' own loss
    # The adapter
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | list[str] = "qv"
    use_rslora: bool = False
    use_dora: bool = False
    # The base model
    quant: str = "none"
    dtype: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    # Processes (one per GPU) training together through torch.distributed, and how they share the base
    nproc: int = 1
    strategy: str = "ddp"  # ddp: each holds the whole base; fsdp: the base sharded across them
    # Data
    max_len: int = 512
    train_on: str = "assistant"  # or "all"
    packing: bool = True
    skip_invalid: bool = False
    # Optimisation
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3  # measured: the default model learns the bundled dates task to 96% exact match in one epoch
    schedule: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    seed: int = 0
    # Bookkeeping
    save_every: int = 50
    eval_every: int = 50
    keep_checkpoints: int = 2
    sample_prompts: list[str] = field(default_factory=list)  # empty: the first eval prompts
    sample_max_new_tokens: int = 64

    def check(self, need_dataset: bool = True) -> "TrainConfig":
        """Raise ConfigError naming the first bad setting and its allowed values; `need_dataset=False` for a
        settings template, which a dataset joins later."""
        if need_dataset and not self.dataset:
            raise ConfigError("No dataset given. Choose a dataset file: JSONL, JSON, CSV or Parquet (--dataset PATH "
                              "on the command line).")
        for name in FLOAT_SETTINGS:
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be a finite number.")
        for name, (high, hint) in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > high:
                shown = f"{value:g}" if isinstance(value, float) or value < 10**15 else f"{str(value)[:12]}..."
                raise ConfigError(f"{name} is {shown}; use at most {high:g} ({hint}).")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed is {self.seed}; use a whole number from 0 to {2**32 - 1}.")
        _choice("quant", self.quant, QUANTIZATIONS)
        _choice("dtype", self.dtype, ("auto", *DTYPES))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("train_on", self.train_on, ("assistant", "all"))
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("method", self.method, METHODS)
        if self.method != "sft" and self.train_on != "assistant":
            raise ConfigError(f"train_on is {self.train_on!r}; {self.method} compares answers, so it trains on "
                              "answers only: use train_on 'assistant'.")
        if not 0 < self.beta <= 100:
            raise ConfigError(f"beta is {self.beta}; use a positive value up to 100 (0.1 is usual for DPO).")
        if not 0 < self.orpo_lambda <= 100:
            raise ConfigError(f"orpo_lambda is {self.orpo_lambda}; use a positive value up to 100 (0.1 is usual).")
        for name in ("nproc", "rank", "batch_size", "grad_accum", "save_every", "eval_every", "keep_checkpoints",
                     "sample_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be 1 or more.")
        if self.max_len < MIN_MAX_LEN:
            raise ConfigError(f"max_len is {self.max_len}; an example needs room for its chat template and an "
                              f"answer: use {MIN_MAX_LEN} or more (512 is typical).")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps is {self.max_steps}; use 1 or more, or leave it out to train by epochs.")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"epochs is {self.epochs}; use a positive number, or set max_steps.")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr is {self.lr}; LoRA learning rates are usually 1e-5 to 1e-3.")
        if self.alpha <= 0:
            raise ConfigError(f"alpha is {self.alpha}; it must be positive (2 x rank is a common choice).")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm is {self.max_grad_norm}; it must be positive (1.0 is usual): "
                              "clipping to 0 would zero every update.")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay is {self.weight_decay}; use 0 or more (0 is usual for LoRA).")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout is {self.dropout}; use a value in [0, 1).")
        if not 0 <= self.eval_share < 1:
            raise ConfigError(f"eval_share is {self.eval_share}; use a value in [0, 1).")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio is {self.warmup_ratio}; use a value in [0, 1).")
        return self

    def to_yaml(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: Path, name: str | None = None) -> "TrainConfig":
        """The config in a YAML file; messages call the file `name` (default: its path), e.g. an upload's own
        name rather than the web server's temporary copy."""
        name = name or str(path)
        try:
            values = yaml.safe_load(read_text_capped(Path(path), MAX_CONFIG_BYTES, what="A run config")) or {}
        except FileNotFoundError:
            raise ConfigError(f"Config file {name} does not exist. Check the path.") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"Config file {name} is not text (byte {error.start} is not UTF-8): it is no YAML "
                              "config. Choose the run.yaml you saved.") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {name} is not valid YAML: {error}. Fix the line it names.") from None
        except RecursionError:
            raise ConfigError(f"Config file {name} nests too deeply to be a run config. Choose the run.yaml you "
                              "saved.") from None
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {name} must hold a mapping of setting: value.")
        return cls.from_dict(values, where=name)

    @classmethod
    def from_dict(cls, values: dict, where: str = "the config") -> "TrainConfig":
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) in {where}: {', '.join(unknown)}. Known: {', '.join(sorted(kinds))}."
            )
        return cls(**{name: _typed(name, value, kinds[name], where) for name, value in values.items()})


KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "empty"}


def _typed(name: str, value: object, annotation: object, where: str) -> object:
    """`value` as the setting's type (8.0 from YAML or a number box becomes 8), or a ConfigError naming the
    setting: a typo ('banana') would fail late with a TypeError, and rank 2.5 must not quietly train at 2."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    for kind in kinds:
        if kind is type(None) and value is None or kind in (bool, str) and isinstance(value, kind):
            return value
        if kind is int and number and float(value).is_integer():
            return int(value)
        if kind is float and number:
            return float(value)
        if typing.get_origin(kind) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    wanted = " or ".join(KIND_NAMES.get(kind, "a list of text") for kind in kinds)
    raise ConfigError(f"{name} in {where} is {value!r}; it must be {wanted}.")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} is {value!r}; choose one of: {', '.join(allowed)}.")
