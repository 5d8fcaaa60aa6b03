"""Datasets for training: load, validate, render with the chat template, mask, and batch.

    file or hub id --read--> rows (with line/row numbers)
        --formats--> Examples (chat messages, or plain text)       every bad row -> ValidationReport
        --render-->  RenderedExample (input_ids, labels)            labels = -100 except answers + their EOS
        --batch-->   Batch (packed rows, or length-grouped padding) resumable at DataPosition(epoch, index)

Preference datasets (prompt, chosen, rejected) for DPO and ORPO take the same path in core.data.preference: every
row checked by line, each pair rendered as two examples sharing the prompt, batched two answers per pair.

The training loop calls `prepare_dataset` once (it refuses invalid data unless skip_invalid) and then
`iterate_batches`; the CLI and UI call `data_preflight` to show the same facts before a run.
"""

from core.data.batch import (
    Batch,
    BatchSettings,
    DataPosition,
    batches_per_epoch,
    epoch_plan,
    iterate_batches,
    padding_share,
)
from core.data.formats import FORMATS, Example
from core.data.load import load_examples
from core.data.preflight import DataPreflight, data_preflight
from core.data.prepare import PreparedDataset, prepare_dataset
from core.data.problems import DatasetError, Problem, ValidationReport
from core.data.render import IGNORE_INDEX, RenderedExample, render_example

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "Batch",
    "BatchSettings",
    "DataPosition",
    "DataPreflight",
    "DatasetError",
    "Example",
    "PreparedDataset",
    "Problem",
    "RenderedExample",
    "ValidationReport",
    "batches_per_epoch",
    "data_preflight",
    "epoch_plan",
    "iterate_batches",
    "load_examples",
    "padding_share",
    "prepare_dataset",
    "render_example",
]
