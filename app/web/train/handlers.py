"""What the Train tab does when a person acts: each handler takes the form's values (in `names` order) and
returns what its outputs show. They call core only; a refused action raises app.web.refusal."""

from pathlib import Path

import gradio as gr

from app.web.readable import check_readable
from app.web.refusal import refusal
from app.web.train.form import PRESET_VALUES, form_values, to_config
from app.web.train.layout import NO_DATASET, SAMPLES
from app.web.train.preview import preflight_view, preview
from app.web.train.uploads import keep_uploaded_dataset
from core import jobs, paths
from core.errors import LoraForgeError
from core.models.loading import LoadedModel, load_tokenizer
from core.store.database import Store
from core.training.config import TrainConfig


class TrainHandlers:
    def __init__(self, loaded: LoadedModel, store: Store, names: list[str]) -> None:
        self.loaded, self.store, self.names = loaded, store, names

    def values_of(self, values: tuple) -> dict:
        return dict(zip(self.names, values))

    def fill(self, config: TrainConfig) -> list:
        shown = {**form_values(config), "base": config.base, "dataset": config.dataset}
        return [shown[name] for name in self.names]

    def show_dataset(self, source: str):
        if not source.strip():
            return None, ""
        try:
            return preview(check_readable(source.strip()))
        except LoraForgeError as error:
            gr.Warning(str(error))
            return None, f"**Cannot read this dataset:**\n```\n{error}\n```"

    def run_preflight(self, *values):
        current = self.values_of(values)
        if not current["dataset"].strip():
            return NO_DATASET, "", "", ""
        try:
            return preflight_view(readable_config(to_config(current)), self.loaded)
        except LoraForgeError as error:
            return f"**Not ready:**\n```\n{error}\n```", "", "", ""

    @staticmethod
    def choose_sample(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        evals = SAMPLES / f"{name}.eval.jsonl"
        return str(SAMPLES / f"{name}.train.jsonl"), str(evals) if evals.is_file() else ""

    @staticmethod
    def forget_sample_eval(eval_file: str):
        """Typing another dataset drops the bundled sample's eval file that choosing the sample filled in."""
        return "" if eval_file and Path(eval_file).parent == SAMPLES else gr.skip()

    @staticmethod
    def keep_upload(path: str | None):
        if not path:
            return gr.skip(), gr.skip()
        return str(keep_uploaded_dataset(Path(path))), ""

    def start_run(self, *values):
        try:
            config = readable_config(to_config(self.values_of(values)))
            # the rows are rendered with the run's own tokenizer: the served one when the run's base is served
            served = config.base == self.loaded.facts.source
            tokenizer = self.loaded.tokenizer if served else load_tokenizer(config.base)
            new_id = jobs.submit(self.store, config, tokenizer=tokenizer)
        except LoraForgeError as error:
            raise refusal(error, duration=None) from None
        return f"Run `{new_id}` is queued. Follow it in the **Runs** tab.", new_id

    def save_config(self, *values):
        try:
            config = to_config(self.values_of(values), need_dataset=False)  # settings alone make a template
            folder = paths.home() / "configs"
            folder.mkdir(exist_ok=True)
            name = config.name or Path(config.dataset).stem or "train"
            path = paths.named_path(folder, name, ".yaml", what="The run name")
        except LoraForgeError as error:
            raise refusal(error) from None
        config.to_yaml(path)
        return gr.File(value=str(path), visible=True)

    def load_config(self, path: str):
        try:
            return self.fill(TrainConfig.from_yaml(Path(path), name=Path(path).name))
        except LoraForgeError as error:
            raise refusal(error) from None

    def apply_preset(self, name: str):
        return [PRESET_VALUES[name].get(n, gr.skip()) for n in self.names]


def readable_config(config: TrainConfig) -> TrainConfig:
    """The config, once the page may read its dataset and eval file (app.web.readable)."""
    check_readable(config.dataset)
    if config.eval_file:
        check_readable(config.eval_file, what="The eval file")
    return config
