"""The Chat tab: one model (single), side by side (columns) or blind A/B with its votes (blind), each a module
with its layout, handlers and wiring, assembled by tab; a contender picker (picker), and the streaming reply and
shared settings (stream)."""

from app.web.chat.tab import ChatTab, build_chat_tab

__all__ = ["ChatTab", "build_chat_tab"]
