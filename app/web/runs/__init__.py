"""The Runs tab: every run from the store, the chosen one's curves, figures and log (view), its components (layout),
Stop, Resume and Delete (handlers), the events between them (tab), and the comparison of several runs (compare)."""

from app.web.runs.tab import RunsTab, build_runs_tab

__all__ = ["RunsTab", "build_runs_tab"]
