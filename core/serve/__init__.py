"""The OpenAI-compatible API over one base model and every registered adapter.

    HTTP (routes.api_router: /v1/models, /v1/chat/completions, /v1/completions)
      --body--> checked fields --catalog--> "base" | adapter | "a:0.7,b:0.5" as store rows
      --engine.Engine--> one thread, one batch: requests for different adapters decode together
                         (core.chat.decoding), adapters loaded on first use and kept (least recently used dropped)
      --responses--> OpenAI's JSON or server-sent events; errors in OpenAI's shape (errors.ApiError)
"""

from core.lazy_api import lazy_api

API = {
    "KEY_ENV": "routes", "api_router": "routes",
    "Engine": "engine", "Finished": "engine", "Job": "engine",
    "ApiError": "errors",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
