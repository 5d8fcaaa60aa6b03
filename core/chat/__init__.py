"""Talking to a base and its adapters: generation, what answers in each column or blind slot, and vote tallies.

    conversation + Sampling --generate.stream_reply--> text, token by token (the model's own chat template)
    "base" | adapter | "a:0.7,b:0.5" --contenders.choose--> a Contender: which adapters are on, with which gains
    blind A/B votes --votes.standings--> win rates
"""

from core.lazy_api import lazy_api

API = {
    "GenerationSettingsError": "generate", "Message": "generate", "Sampling": "generate",
    "conversation": "generate", "greedy_answers": "generate", "stream_reply": "generate",
    "BASE_CHOICE": "contenders", "Contender": "contenders", "SET_CHOICE": "contenders", "SET_EXAMPLE": "contenders",
    "choose": "contenders", "model_gains": "contenders",
    "standings": "votes",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
