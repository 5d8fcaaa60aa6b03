"""Training: a config and a dataset in, a PEFT-format adapter out, resumable at any checkpoint.

    TrainConfig (config) --preflight--> what the run would do: tokens, memory, time, problems first
    TrainConfig --loop.train--> steps (data_plan: train/eval sets and batches; loss: trained tokens only;
                                preference: DPO and ORPO on pairs, the reference being the base with the adapter off)
        --> run folder (run_folder, events: metrics, samples, job.log), checkpoints (checkpoint), adapter
    stop         SIGTERM or Ctrl-C ends the step and saves a checkpoint
    evaluate     loss, perplexity and exact match of a base or an adapter on a dataset
    allocator    keeps freed memory in the process so steps do not fault their activations in afresh
"""

from core.lazy_api import lazy_api

API = {
    "ConfigError": "config", "OPTIMIZERS": "config", "SCHEDULES": "config", "TrainConfig": "config",
    "TrainingData": "data_plan", "load_training_data": "data_plan",
    "TrainResult": "loop", "TrainingError": "loop", "lora_settings": "loop", "peak_memory_mb": "loop",
    "planned_steps": "loop", "train": "loop",
    "SKIPPED_ROWS": "run_folder", "RunFolder": "run_folder",
    "batch_settings": "data_plan", "train_examples": "data_plan",
    "LOGITS_PER_CHUNK": "loss", "frozen_head_cross_entropy": "loss", "trained_token_loss": "loss",
    "CheckpointError": "checkpoint", "resume_step": "checkpoint",
    "MemoryEstimate": "preflight", "check_targets": "preflight", "count_trainable": "preflight",
    "estimate_memory": "preflight", "estimate_seconds_per_step": "preflight", "preflight": "preflight",
    "JOB_LOG": "run_folder", "METRICS": "run_folder",
    "event_line": "events", "log_events": "events", "timestamped": "events",
    "evaluate": "evaluate", "evaluate_preferences": "evaluate", "keep_freed_memory": "allocator",
    "PreferenceObjective": "preference", "PreferenceData": "data_plan",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
