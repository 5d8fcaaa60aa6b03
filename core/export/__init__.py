"""Exports: adapters folded into a deployable model, each checked against the live adapter it came from.

    adapters + weights --exporter.export_adapters--> merged HF folder (merged) | GGUF + Modelfile (gguf,
        modelfile) | PEFT folder or zip; written aside and renamed into place (output); parity-checked (parity)
    composition  a weighted set saved and registered as a new adapter
    jobs         exports and compositions as background processes (`python -m core.export.worker ID`)
"""

from core.lazy_api import lazy_api

API = {
    "FORMATS": "exporter", "STATUS_PARITY_FAILED": "exporter", "ExportResult": "exporter",
    "export_adapters": "exporter",
    "GGUF_TYPES": "gguf", "AUTO_DTYPE": "merged", "ExportError": "output", "greedy_verdict": "parity",
    "COMPOSED": "composition", "compose_adapter": "composition",
    "RUNNING": "jobs", "ExportRequest": "jobs", "refresh": "jobs", "run_export_job": "jobs", "start": "jobs",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
