"""The Train tab: the settings form (form), the dataset preview and live preflight (preview, with its charts in
panels), and Start, which queues a background job (tab)."""

from app.web.train.tab import TrainTab, build_train_tab

__all__ = ["TrainTab", "build_train_tab"]
