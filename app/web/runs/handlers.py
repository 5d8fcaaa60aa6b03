"""What the Runs tab does when a person acts or the timer ticks: each handler returns what the tab's outputs show
(the runs table, the chosen run, its progress, stats, curves, samples, log and buttons, in `outputs` order). They
only read the store and run folders, and change a run only through the core action passed to run_action (Stop,
Resume, Delete); a refused action raises app.web.refusal."""

from pathlib import Path

import gradio as gr

from app.web.refusal import refusal
from app.web.runs import view as run_view
from core import jobs
from core.errors import LoraForgeError
from core.jobs.runs import delete_run
from core.store.database import Store
from core.training.checkpoint import resume_step

ACTIVE = ("queued", "running")


class RunsHandlers:
    def __init__(self, store: Store, outputs: list) -> None:
        self.store, self.outputs = store, outputs

    def render(self, run_id: str | None, newest_if_none: bool = True):
        """The tab for `run_id`. None opens the newest run (`newest_if_none`: on opening the tab, not on the
        timer's refreshes); a run that is gone (deleted, here or in another tab) leaves no run chosen, since
        jumping to another one would put its Delete button under the person's pointer."""
        runs = jobs.refresh(self.store)
        ids = [run["id"] for run in runs]
        if run_id is None and newest_if_none:
            run_id = ids[0] if ids else None
        elif run_id not in ids:
            run_id = None
        choice = gr.Dropdown(choices=[(f"{r['id']} · {r['name']} · {r['status']}", r["id"]) for r in runs],
                             value=run_id)
        frame = run_view.runs_table(runs, self.store)
        if run_id is None:
            empty = "Choose a run in the table." if runs else "No runs yet. Start one in the Train tab."
            off = gr.Button(interactive=False)
            return frame, choice, "", empty, None, preference_plot(None), None, "", off, off, off
        run = next(r for r in runs if r["id"] == run_id)
        status = run["status"]
        return (
            frame, choice, run_view.progress_html(run, self.store), run_view.stats_markdown(run, self.store),
            run_view.loss_frame(self.store, run_id),
            preference_plot(run_view.preference_frame(self.store.metrics(run_id))),
            run_view.samples_frame(self.store, run_id), run_view.log_tail(run),
            gr.Button(interactive=status in ACTIVE), gr.Button(interactive=status in jobs.RESUMABLE),
            gr.Button(interactive=status not in ACTIVE),
        )

    def pick(self, frame, event: gr.SelectData):
        return self.render(frame.iloc[event.index[0], 0])

    def run_action(self, action, run_id: str | None, done):
        """Run `action` on the chosen run, then tell the person `done(run_id)`."""
        if not run_id:
            raise refusal("Choose a run first.")
        try:
            action(self.store, run_id)
        except LoraForgeError as error:
            raise refusal(error) from None
        gr.Info(done(run_id))
        return self.render(run_id)

    def resumed(self, run_id: str) -> str:
        step = resume_step(Path(self.store.get_run(run_id)["run_dir"]))
        if step:
            return f"Run {run_id} queued again; it continues after its checkpoint at step {step}."
        return f"Run {run_id} queued again. It stopped before its first checkpoint, so it starts over from step 1."

    def delete_confirmed(self, run_id: str | None):
        if run_id is None:  # the person kept the run
            return tuple(gr.skip() for _ in self.outputs)
        return self.run_action(delete_run, run_id, lambda r: f"Run {r} deleted.")


def preference_plot(frame) -> gr.LinePlot:
    """The preference curves as shown: hidden for a run that logs none (SFT)."""
    return gr.LinePlot(value=frame, visible=frame is not None)
