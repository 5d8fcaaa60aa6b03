"""The run history: one SQLite file that the page, every job process and the CLI share.

    Store (database)   runs and their life (run_status), metrics, samples, exports, votes; adapters (adapters)
    schema             the tables as a list of migrations, applied in order on open
    compare            which settings differ between runs, and how each ended
    processes          is a recorded pid still that same process?
    errors             what the store refuses, each naming the fix
"""

from core.lazy_api import lazy_api

API = {
    "Store": "database", "new_run_id": "database",
    "config_differences": "compare", "final_figures": "compare",
    "AdapterNotFound": "errors", "DatabaseBusy": "errors", "InvalidTransition": "errors", "RunActive": "errors",
    "RunNotFound": "errors",
    "process_alive": "processes", "process_start_time": "processes",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
