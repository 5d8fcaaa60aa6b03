"""The Train tab's settings form: one component per TrainConfig setting, presets, and the conversions
between what the form shows and a TrainConfig (so YAML save/load and Start use one mapping).

Every component gets elem_id `cfg-<setting>`, so tests and styles can find it.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from core.lora.targets import PRESETS
from core.models.devices import DTYPES
from core.models.quantize import QUANTIZATIONS
from core.training.config import METHODS, OPTIMIZERS, SCHEDULES, STRATEGIES, ConfigError, TrainConfig
from core.training.distributed import process_choices

CUSTOM = "custom"
REGEX_CHARS = "*+?()[]|^$\\"  # a custom target with one of these is a regex over module paths
TARGET_CHOICES = [*PRESETS, CUSTOM]
# Settings the form does not hold itself: the tab builds base and dataset with their own helpers.
OUTSIDE_FORM = ("base", "dataset")

# "Balanced" is TrainConfig's defaults, measured to teach the default model the bundled dates task (96% exact
# match in one epoch on a 2-core CPU); "Quick test" checks a setup in a minute; "Quality" trains more of the model.
PRESET_VALUES: dict[str, dict] = {
    "Quick test": dict(rank=4, alpha=8, dropout=0.0, targets="qv", epochs=1, max_steps=20, lr=1e-3, batch_size=4,
                       max_len=256),
    "Balanced": dict(rank=8, alpha=16, dropout=0.0, targets="qv", epochs=1, max_steps=0, lr=1e-3,
                     batch_size=8, max_len=512),
    "Quality": dict(rank=16, alpha=32, dropout=0.05, targets="all-linear", epochs=2, max_steps=0, lr=5e-4,
                    batch_size=8, max_len=1024),
}


def _num(label: str, **options) -> Callable[[], gr.Number]:
    """A number box with no limits or rounding of its own: TrainConfig checks every value and names the field
    (Gradio's limits answered "Value 0 is less than minimum value 1." without saying which box, and its
    rounding trained rank 2.5 as rank 2)."""
    return lambda value: gr.Number(value=value, label=label, **options)


MAIN_ROWS: list[dict[str, Callable[[object], gr.Component]]] = [
    {"name": lambda value: gr.Textbox(value=value, label="Run name", placeholder="optional, e.g. dates-r8")},
    {"method": lambda value: gr.Radio(list(METHODS), value=value, label="Method",
                                      info="sft: learn the answers; dpo, orpo: learn which of two answers is preferred "
                                           "(a prompt/chosen/rejected dataset)"),
     "beta": _num("DPO beta (how far from the base)"), "orpo_lambda": _num("ORPO lambda")},
    {"rank": _num("Rank r"), "alpha": _num("Alpha"),
     "dropout": _num("Dropout", step=0.05)},
    {"targets": lambda value: gr.Radio(TARGET_CHOICES, value=value, label="Target layers"),
     "custom_targets": lambda value: gr.Textbox(
         value=value, label="Custom targets (comma-separated module names, or a regex)", placeholder="q_proj, v_proj")},
    {"quant": lambda value: gr.Radio(list(QUANTIZATIONS), value=value, label="Base quantization"),
     "epochs": _num("Epochs"), "max_steps": _num("Max steps (0 = train by epochs)")},
    {"lr": _num("Learning rate"), "batch_size": _num("Batch size"),
     "max_len": _num("Max length (tokens)")},
    {"nproc": lambda value: gr.Dropdown(process_choices(), value=value, label="Processes / GPUs",
                                        info="training together: one per GPU; on a CPU they share its cores"),
     "strategy": lambda value: gr.Radio(list(STRATEGIES), value=value, label="Strategy (several processes)",
                                        info="ddp: each holds the whole base; fsdp: the base is split among them")},
]
ADVANCED_ROWS: list[dict[str, Callable[[object], gr.Component]]] = [
    {"eval_file": lambda value: gr.Textbox(value=value, label="Eval file (optional)"),
     "eval_share": _num("Eval share when no eval file")},
    {"train_on": lambda value: gr.Radio(["assistant", "all"], value=value, label="Train on"),
     "packing": lambda value: gr.Checkbox(value=value, label="Pack examples"),
     "skip_invalid": lambda value: gr.Checkbox(value=value, label="Skip invalid rows")},
    {"grad_accum": _num("Gradient accumulation"),
     "schedule": lambda value: gr.Dropdown(list(SCHEDULES), value=value, label="LR schedule"),
     "warmup_ratio": _num("Warm-up share"),
     "weight_decay": _num("Weight decay")},
    {"max_grad_norm": _num("Gradient clip norm"),
     "optimizer": lambda value: gr.Dropdown(list(OPTIMIZERS), value=value, label="Optimizer"),
     "seed": _num("Seed")},
    {"use_rslora": lambda value: gr.Checkbox(value=value, label="rsLoRA scaling"),
     "use_dora": lambda value: gr.Checkbox(value=value, label="DoRA"),
     "gradient_checkpointing": lambda value: gr.Checkbox(value=value, label="Gradient checkpointing"),
     "dtype": lambda value: gr.Dropdown(["auto", *DTYPES], value=value, label="Base dtype",
                                        info="auto: bf16 on a GPU or a CPU with bf16 products, else fp32"),
     "device": lambda value: gr.Textbox(value=value, label="Device (auto, cpu, cuda, cuda:N)")},
    {"save_every": _num("Checkpoint every (steps)"),
     "eval_every": _num("Evaluate every (steps)"),
     "keep_checkpoints": _num("Checkpoints kept")},
    {"sample_prompts": lambda value: gr.Textbox(
        value=value, label="Sample prompts at checkpoints (one per line; empty: first eval prompts)", lines=2),
     "sample_max_new_tokens": _num("Sample length (tokens)")},
]


def build_form(config: TrainConfig) -> dict[str, gr.Component]:
    """Lay out the settings showing `config` (the rest in an 'Advanced' accordion); returns name -> component."""
    values = form_values(config)
    components: dict[str, gr.Component] = {}

    def lay_out(rows: list[dict[str, Callable[[object], gr.Component]]]) -> None:
        for row in rows:
            with gr.Row():
                for name, make in row.items():
                    components[name] = make(values[name])
                    components[name].elem_id = f"cfg-{name}"

    lay_out(MAIN_ROWS)
    with gr.Accordion("Advanced", open=False):
        lay_out(ADVANCED_ROWS)
    return components


def form_values(config: TrainConfig) -> dict:
    """What each form component shows for `config` (inverse of `to_config`)."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in OUTSIDE_FORM}
    targets = config.targets
    custom = isinstance(targets, list) or targets not in PRESETS
    values["targets"] = CUSTOM if custom else targets
    values["custom_targets"] = (", ".join(targets) if isinstance(targets, list) else targets) if custom else ""
    values["max_steps"] = config.max_steps or 0
    values["name"] = config.name or ""
    values["eval_file"] = config.eval_file or ""
    values["sample_prompts"] = "\n".join(config.sample_prompts)
    return values


def to_config(values: dict, need_dataset: bool = True) -> TrainConfig:
    """A checked TrainConfig from the form's values (plus base and dataset); ConfigError names a bad field.
    `need_dataset=False` for a settings template saved before any dataset is chosen."""
    values = dict(values)
    empty = [name for name, value in values.items() if value is None]
    if empty:
        raise ConfigError(f"{', '.join(empty)} is empty; fill it in or choose a preset.")
    targets, custom = values.pop("targets"), values.pop("custom_targets").strip()
    if targets == CUSTOM:
        if not custom:
            raise ConfigError("Targets are 'custom' but no module names are given; type e.g. q_proj, v_proj.")
        is_regex = any(char in custom for char in REGEX_CHARS)
        targets = custom if is_regex else [part.strip() for part in custom.split(",") if part.strip()]
    values["targets"] = targets
    values["max_steps"] = values["max_steps"] or None
    values["name"] = values["name"].strip() or None
    values["dataset"] = _path(values["dataset"])
    values["eval_file"] = _path(values["eval_file"]) or None
    values["sample_prompts"] = [line.strip() for line in values["sample_prompts"].splitlines() if line.strip()]
    return TrainConfig.from_dict(values, where="the form").check(need_dataset)


def _path(typed: str) -> str:
    """A path as typed into the form: spaces around it dropped and ~ expanded, as the dataset preview reads it."""
    typed = typed.strip()
    return str(Path(typed).expanduser()) if typed else ""
