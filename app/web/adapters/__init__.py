"""The Adapters & Export tab: its components (layout), registered adapters and imports, background exports and
compositions (handlers), the events between them (tab), and the tables and parity reports it shows (report)."""

from app.web.adapters.tab import AdaptersTab, build_adapters_tab

__all__ = ["AdaptersTab", "build_adapters_tab"]
