"""The Runs tab: every run from the store, the chosen one's curves, figures and log (view), its components (layout),
Stop, Resume and Delete (handlers), the events between them (tab), and the comparison of several runs (compare).

Nothing is imported here, so `launch.py runs`, which shares the view's table and progress, never loads gradio."""
