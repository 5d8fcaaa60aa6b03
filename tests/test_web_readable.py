"""What the page reads when a person names a file (security probe 2.14): datasets, the samples and LoRA Forge's
own files, never its database, system files or other tools' hidden folders."""

import re

import pytest

from app.web.readable import SAMPLES, NotReadable, check_readable
from app.web.train.handlers import TrainHandlers
from tests.job_helpers import DATES


def test_the_page_reads_datasets_samples_and_its_own_uploads(loraforge_home, tmp_path):
    plain = tmp_path / "data" / "mine.jsonl"
    upload = loraforge_home / "uploads" / "abc" / "up.jsonl"
    for path in (plain, upload):
        path.parent.mkdir(parents=True)
        path.write_text(DATES.read_text())
    assert check_readable(str(plain)) == str(plain) and check_readable(str(upload)) == str(upload)
    assert check_readable(str(SAMPLES / "dates.train.jsonl"))


@pytest.mark.parametrize("where, message", [
    ("db", "LoRA Forge's own database"),
    ("hidden", "lies in a hidden folder (.aws)"),
    ("proc", "is a system file"),
    ("link", "lies in a hidden folder (.ssh)"),
])
def test_the_page_refuses_its_database_system_files_and_hidden_folders(loraforge_home, tmp_path, where, message):
    secret = tmp_path / ".aws" / "credentials.csv"
    secret.parent.mkdir()
    secret.write_text("key,value\nsecret,1\n")
    key = tmp_path / ".ssh" / "id.jsonl"
    key.parent.mkdir()
    key.write_text("{}\n")
    (tmp_path / "innocent.jsonl").symlink_to(key)
    typed = {"db": str(loraforge_home / "loraforge.db"), "hidden": str(secret), "proc": "/proc/self/environ",
             "link": str(tmp_path / "innocent.jsonl")}[where]
    with pytest.raises(NotReadable, match=re.escape(message)):
        check_readable(typed)
    table, summary = TrainHandlers(None, None, []).show_dataset(typed)
    assert table is None and "Cannot read this dataset" in summary and message in summary
    assert "secret" not in summary


def test_uploads_no_run_uses_are_removed_after_a_day_and_the_used_ones_kept(loraforge_home, tmp_path, tiny_llama_dir):
    import os
    import time

    from app.web.train.uploads import keep_uploaded_dataset, prune_uploads, uploads_dir
    from core.jobs.runs import create_run
    from core.store.database import Store
    from core.training.config import TrainConfig

    sources = {}
    for name in ("used", "unused", "fresh"):
        sources[name] = tmp_path / f"{name}.jsonl"
        sources[name].write_text(DATES.read_text() + f'{{"instruction": "{name}", "output": "x"}}\n')
    kept = {name: keep_uploaded_dataset(path) for name, path in sources.items()}
    day_ago = time.time() - 2 * 24 * 3600
    for name in ("used", "unused"):
        os.utime(kept[name].parent, (day_ago, day_ago))
    mine = uploads_dir() / "not-a-folder.txt"
    mine.write_text("left alone")
    with Store() as store:
        create_run(store, TrainConfig(base=str(tiny_llama_dir), dataset=str(kept["used"])))
        assert prune_uploads(store) == [kept["unused"].parent]
    assert kept["used"].is_file() and kept["fresh"].is_file() and not kept["unused"].exists()
    assert mine.read_text() == "left alone"
