"""Background work: every run is a row in the store and one OS process, so closing the page loses nothing.

    submit(config) --background--> queued row --supervisor--> `python -m core.jobs.worker train` --runs.execute_run-->
        running --> completed | failed | interrupted | cancelled         (cancel stops the job's process group)
    runs         create, execute, delete a run; the final JSON line
    adapters     register a trained, imported or composed adapter; find one by folder, run id or name
    settings     how many jobs at once, and whether interrupted runs resume by themselves
"""

from core.lazy_api import lazy_api

API = {
    "RESUMABLE": "background", "RunNotResumable": "background", "cancel": "background", "refresh": "background",
    "resumable_run": "background", "resume_in_background": "background", "run_claimed_job": "background",
    "submit": "background",
    "create_run": "runs", "record_run": "runs", "delete_run": "runs", "execute_run": "runs", "file_sha256": "runs",
    "report_outcome": "runs",
    "AdapterSource": "adapters", "adapter_source": "adapters", "import_adapter": "adapters",
    "register_adapter": "adapters",
    "JobSettings": "settings", "SettingsError": "settings", "load_job_settings": "settings",
    "ensure_supervisor": "supervisor", "supervisor_running": "supervisor",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
