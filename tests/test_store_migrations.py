"""Schema versions: a new file gets every migration, an older file upgrades itself on open, atomically."""

import sqlite3

import pytest
from sqlite_utils import Database

from core.store import schema as store_schema
from core.store.database import Store
from core.store.errors import DatabaseTooNew


def user_version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def make_v1_database(path):
    """A database as a LoRA Forge with only migration 1 left it, with one run in it, written with raw sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    store_schema.MIGRATIONS[0](Database(conn, execute_plugins=False))
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO runs (id, name, status, created, config) "
        "VALUES ('r-20250101-000000-aaaa', 'old', 'completed', '2025-01-01T00:00:00+00:00', '{\"r\": 4}')"
    )
    conn.close()


def test_empty_file_gets_every_table(tmp_path):
    path = tmp_path / "new.db"
    with Store(path) as store:
        assert set(store.db.table_names()) == {"runs", "metrics", "samples", "adapters", "exports", "chat_votes"}
    assert user_version(path) == len(store_schema.MIGRATIONS) == 3
    with Store(path) as store:  # opening again changes nothing
        assert store.list_runs() == []
    assert user_version(path) == 3


def test_version_1_gains_the_background_export_columns_and_keeps_its_exports(tmp_path):
    path = tmp_path / "old.db"
    make_v1_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO exports (format, path, created, status) VALUES ('merged', '/x', '2025', 'done')")
    with Store(path) as store:
        [export] = store.exports()
        assert (export["format"], export["status"], export["pid"], export["request"]) == ("merged", "done", None, None)
        store.update_export(export["id"], request={"format": "gguf"}, progress="Loading", size_bytes=12)
        assert store.get_export(export["id"])["request"] == {"format": "gguf"}
    assert user_version(path) == 3


def test_older_database_upgrades_itself_and_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    make_v1_database(path)

    def add_notes(db: Database) -> None:
        db["runs"].add_column("notes", str)
        db.execute("UPDATE runs SET notes = 'from v1'")

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, add_notes])
    with Store(path) as store:
        [run] = store.list_runs()
        assert (run["name"], run["config"], run["notes"]) == ("old", {"r": 4}, "from v1")
    with sqlite3.connect(path) as db:  # the new column is writable
        db.execute("UPDATE runs SET notes = 'new' WHERE id = ?", (run["id"],))
    assert user_version(path) == len(store_schema.MIGRATIONS)


def test_failed_migration_leaves_the_older_version_whole(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    make_v1_database(path)

    def half_done(db: Database) -> None:
        db["tags"].create({"id": int, "tag": str}, pk="id")
        raise RuntimeError("bug in migration 2")

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, half_done])
    with pytest.raises(RuntimeError, match="bug in migration 2"):
        Store(path)
    assert user_version(path) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'tags'").fetchone()[0] == 0
        assert conn.execute("SELECT name FROM runs").fetchall() == [("old",)]


def test_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "future.db"
    make_v1_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(DatabaseTooNew, match="schema version 7.*Update LoRA Forge"):
        Store(path)
    assert user_version(path) == 7
