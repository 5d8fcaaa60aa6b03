"""The web page. For now one tab: chat with the loaded base model, replies streaming in.

Only UI code lives here: every action calls `core`, and a user's mistake shows as a readable
message in the page (gr.Error), never as a stack trace.
"""

import gradio as gr

from core.errors import LoraForgeError
from core.generate import Sampling, conversation, stream_reply
from core.models import LoadedModel, ModelFacts

PAGE_TITLE = "LoRA Forge"


def build_page(loaded: LoadedModel) -> gr.Blocks:
    with gr.Blocks(title=PAGE_TITLE) as page:
        gr.Markdown(f"# {PAGE_TITLE}\nFine-tune language models on your own machine.")
        gr.Markdown(describe_model(loaded.facts), elem_id="model-facts")
        build_chat_tab(loaded)
    return page


def build_chat_tab(loaded: LoadedModel) -> None:
    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460, buttons=["copy"])
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="prompt", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    with gr.Accordion("Sampling settings", open=False):
        system = gr.Textbox(label="System prompt", placeholder="Optional, e.g. 'Answer in one sentence.'")
        temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0 = greedy, repeatable)")
        max_new_tokens = gr.Slider(16, 1024, value=256, step=16, label="Max new tokens")
        clear = gr.Button("Clear conversation", elem_id="clear")

    def respond(text: str, history: list[dict], system_prompt: str, temp: float, max_new: int):
        if not text.strip():
            raise gr.Error("Type a message first.")
        earlier = [{"role": m["role"], "content": message_text(m)} for m in history]
        messages = conversation(text, earlier, system_prompt.strip() or None)
        shown = [*history, {"role": "user", "content": text}]
        try:
            for reply in stream_reply(loaded.model, loaded.tokenizer, messages, Sampling(int(max_new), float(temp))):
                yield "", [*shown, {"role": "assistant", "content": reply}]
        except LoraForgeError as error:
            raise gr.Error(str(error)) from None

    inputs = [prompt, chatbot, system, temperature, max_new_tokens]
    prompt.submit(respond, inputs, [prompt, chatbot])
    send.click(respond, inputs, [prompt, chatbot])
    clear.click(lambda: [], None, chatbot)


def describe_model(facts: ModelFacts) -> str:
    size_mb = facts.weight_bytes / 2**20
    quantized = "" if facts.quantization == "none" else f", {facts.quantization}"
    return (
        f"**Base model:** {facts.name} · {facts.parameters / 1e6:.1f} M parameters · "
        f"{size_mb:,.0f} MB of weights ({facts.dtype}{quantized}) · on {facts.device}"
    )


def message_text(message: dict) -> str:
    """The text of a chat message; Gradio may hand content back as a list of typed parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
