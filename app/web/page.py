"""The web page: Chat, Train, Runs and Adapters & Export tabs over one loaded base model, and a footer with
device, memory and queue.

Only UI code lives here: every action calls `core`, all state comes from the store and the run folders
(so a reload or a second tab shows the same truth), and a user's mistake shows as a readable message
(app.web.refusal), never as a stack trace, in the page or in the server log.
"""

from pathlib import Path

import gradio as gr

from app.web.adapters import build_adapters_tab
from app.web.chat import build_chat_tab
from app.web.footer import footer_text
from app.web.model_facts import describe_model
from app.web.runs.tab import build_runs_tab
from app.web.train import build_train_tab
from app.web.train.uploads import prune_uploads
from core.models.loading import LoadedModel
from core.store.database import Store

PAGE_TITLE = "LoRA Forge"
FOOTER_SECONDS = 5
# The look, passed to launch() (Gradio 6 takes css and theme there, not in Blocks). Default's fonts ship with
# Gradio, so the page needs no network.
STYLESHEET = Path(__file__).resolve().parents[2] / "assets" / "web.css"
THEME = gr.themes.Default(primary_hue="orange", neutral_hue="slate", spacing_size="sm", radius_size="sm")


def build_page(loaded: LoadedModel) -> gr.Blocks:
    store = Store()  # one connection shared by the page's threads; every job process opens its own
    prune_uploads(store)
    # Gradio's own copies of uploads (its cache), an hour's sweep of those older than a day
    with gr.Blocks(title=PAGE_TITLE, delete_cache=(3600, 86400)) as page:
        gr.Markdown(f"# {PAGE_TITLE}\nFine-tune language models on your own machine.")
        gr.Markdown(describe_model(loaded.facts), elem_id="model-facts")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat = build_chat_tab(loaded, store)
            with gr.Tab("Train", id="train") as train_tab:
                train = build_train_tab(loaded, store)
            with gr.Tab("Runs", id="runs") as runs_tab:
                runs = build_runs_tab(store)
            with gr.Tab("Adapters & Export", id="adapters") as adapters_tab:
                adapters = build_adapters_tab(loaded, store)
        footer = gr.Markdown(elem_id="footer")
        footer_timer = gr.Timer(FOOTER_SECONDS)

        def show_footer() -> str:
            return footer_text(loaded, store)

        page.load(show_footer, None, footer)
        footer_timer.tick(show_footer, None, footer, show_progress="hidden")
        # The runs timer ticks only while the Runs tab is shown.
        runs_tab.select(runs.render, runs.selected, runs.outputs).then(lambda: gr.Timer(active=True), None, runs.timer)
        runs_tab.select(runs.compare.refresh, runs.compare.select, runs.compare.select)
        for other in (chat_tab, train_tab, adapters_tab):
            other.select(lambda: gr.Timer(active=False), None, runs.timer)
        chat_tab.select(chat.adapter_choices, chat.choices, chat.choices)
        page.load(chat.adapter_choices, chat.choices, chat.choices)  # the page opens on the Chat tab
        adapters_tab.select(adapters.render, None, adapters.outputs)
        train.started.success(lambda run_id: (gr.Tabs(selected="runs"), run_id, gr.Timer(active=True)),
                              train.run_id, [tabs, runs.selected, runs.timer]).then(
            runs.compare.refresh, runs.compare.select, runs.compare.select)  # switching tabs here fires no select
    return page
