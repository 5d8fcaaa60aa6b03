"""Comparing runs: which settings differ between them and how each one ended.

Pure functions over the run dicts the store returns (plus its metrics for runs still going), so the Runs tab's
compare view and any other front-end show the same differences.
"""

from core.store.database import Store

# The name labels the run's column; it is not a setting that explains a difference in the curves.
NOT_SETTINGS = ("name",)


def config_differences(configs: list[dict]) -> dict[str, list]:
    """The settings whose values are not all equal across `configs`, each with its value per config (None where
    a config lacks it), in the order the settings first appear (TrainConfig's order)."""
    keys = list(dict.fromkeys(key for config in configs for key in config if key not in NOT_SETTINGS))
    values = {key: [config.get(key) for config in configs] for key in keys}
    return {key: column for key, column in values.items() if any(value != column[0] for value in column[1:])}


def final_figures(store: Store, run: dict) -> dict[str, float | None]:
    """The run's final train loss, eval loss and training throughput: its summary once it has one, else the newest
    metrics (a run still going, or one that failed before writing a summary). The step-0 evaluation is the base's
    own loss, not the run's, so it is never the run's eval loss."""
    summary = run["summary"] or {}
    train = store.metrics(run["id"], "train")
    evals = [row for row in store.metrics(run["id"], "eval") if row["step"] > 0]
    return {
        "train_loss": summary.get("train_loss", train[-1]["loss"] if train else None),
        "eval_loss": summary.get("eval_loss", evals[-1]["loss"] if evals else None),
        "tokens_per_s": summary.get("tokens_per_s", train[-1]["tokens_per_s"] if train else None),
        # DPO and ORPO runs: the newest evaluation's (else the newest step's) preference figures
        **{key: next((row[key] for row in reversed(evals or train) if row.get(key) is not None), None)
           for key in ("preference_accuracy", "reward_margin")},
    }
