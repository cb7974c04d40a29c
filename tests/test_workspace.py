"""The workspace: schema, versioning, short connections across processes, the job store."""

from __future__ import annotations

import multiprocessing as mp

import duckdb
import pytest

from core.store.jobs import JobStore
from core.store.schema import FAILURES_DDL, IMAGES_DDL, SCHEMA_VERSION
from core.store.workspace import (
    NotAWorkspaceError,
    SchemaVersionError,
    Workspace,
    WorkspaceError,
)


def test_create_makes_every_table_and_records_the_version(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    tables = set(ws.df("SELECT table_name FROM information_schema.tables").table_name)
    assert {"meta", "classes", "images", "models", "embedding_sets", "predictions", "selections",
            "selection_items", "metrics", "attributions", "slice_runs", "slices", "slice_members",
            "annotations", "slice_targets", "slice_target_members", "eval_sets", "label_issues", "failures",
            "failure_members"} <= tables
    assert ws.schema_version() == SCHEMA_VERSION
    assert (tmp_path / "ws" / "artifacts").is_dir()
    assert ws.jobs().list() == []


def test_schema_rejects_bad_values(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(duckdb.ConstraintException):
        with ws.write() as con:
            con.execute("INSERT INTO images (image_id, path, split) VALUES (1, 'a.png', 'validation')")
    with pytest.raises(duckdb.ConstraintException):
        with ws.write() as con:
            con.execute("INSERT INTO selection_items VALUES ('s', 1, 0, 0.1, NULL, 0, 'maybe', 'retrieved', NULL)")


def test_failed_write_is_rolled_back(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(RuntimeError):
        with ws.write() as con:
            con.execute("INSERT INTO classes VALUES (0, 'cat')")
            raise RuntimeError("boom")
    assert ws.class_names() == []


def test_open_explains_what_is_wrong(tmp_path):
    with pytest.raises(NotAWorkspaceError, match="does not exist"):
        Workspace.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAWorkspaceError, match="not a DCD Studio workspace"):
        Workspace.open(tmp_path / "empty")
    ws = Workspace.create(tmp_path / "old")
    with ws.write() as con:
        con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="version 0"):
        Workspace.open(tmp_path / "old")
    with pytest.raises(WorkspaceError, match="already holds"):
        Workspace.create(tmp_path / "old")


#: What each older version lacked: version 1 had no slice targets and no label issues, version 2 no label noise,
#: none of the four image metadata, none of the five the failures of a cell or picked images; versions 1 and 2
#: had no item kinds and confidences; 1 to 3 called DCD's neighbours ``k``; none allowed the uploaded split
#: and failure kind of version 7 (a CHECK constraint each, :func:`_before_v7`).
_METADATA = ("metadata_columns", "image_metadata")
_FAILURES = ("failures", "failure_members")
_LACKED = {1: ("slice_target_members", "slice_targets", "eval_sets", "label_issues", "label_noise", *_METADATA,
               *_FAILURES),
           2: ("label_noise", *_METADATA, *_FAILURES), 3: (*_METADATA, *_FAILURES), 4: (*_METADATA, *_FAILURES),
           5: _FAILURES, 6: ()}


def _before_v7(con, table: str, ddl: str, old: str, new: str) -> None:
    """``table`` as versions 1 to 6 made it: its CHECK constraint without ``new`` (the uploaded split or
    failure kind), which DuckDB cannot drop in place."""
    con.execute(f"DROP TABLE {table}")
    assert new in ddl
    con.execute(ddl.replace(new, old))


@pytest.mark.parametrize("version", sorted(_LACKED))
def test_an_older_workspace_is_upgraded_in_place_and_keeps_its_rows(tmp_path, version):
    ws = Workspace.create(tmp_path / "old")
    with ws.write() as con:  # what a workspace of that version looked like
        con.execute("INSERT INTO classes VALUES (0, 'cat')")
        _before_v7(con, "images", IMAGES_DDL, "'pool')", "'pool', 'uploaded')")
        _before_v7(con, "failures", FAILURES_DDL, "'picked')", "'picked', 'uploaded')")
        for table in _LACKED[version]:
            con.execute(f"DROP TABLE {table}")
        if version < 3:
            for column in ("kind", "confidence"):
                con.execute(f"ALTER TABLE selection_items DROP COLUMN {column}")
            con.execute("INSERT INTO selection_items VALUES ('old', 1, 0, 0.1, NULL, 0, 'proposed')")
        else:
            con.execute("INSERT INTO selection_items VALUES ('old', 1, 0, 0.1, NULL, 0, 'proposed', 'retrieved', NULL)")
        neighbours = "neighbours"
        if version < 4:
            con.execute("ALTER TABLE selections RENAME COLUMN neighbours TO k")
            neighbours = "k"
        con.execute(f"INSERT INTO selections (selection_id, name, method, {neighbours}) VALUES ('old', 'old', 'dcd', 7)")
        con.execute("INSERT INTO images (image_id, path, split, label) VALUES (0, 'a.png', 'train', 0)")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    with pytest.raises(SchemaVersionError, match=f"version {version}, which this DCD Studio upgrades in place"):
        Workspace.open(tmp_path / "old", read_only=True)  # a viewer cannot upgrade it
    opened = Workspace.open(tmp_path / "old")
    assert opened.fetchone("SELECT kind, confidence FROM selection_items WHERE selection_id = 'old'") == ("retrieved",
                                                                                                           None)
    assert opened.scalar("SELECT neighbours FROM selections WHERE selection_id = 'old'") == 7
    assert opened.schema_version() == SCHEMA_VERSION == 7
    assert opened.class_names() == ["cat"] and opened.scalar("SELECT path FROM images") == "a.png"
    for table in _LACKED[version]:
        assert opened.scalar(f"SELECT count(*) FROM {table}") == 0
    # the upgraded workspace takes metadata like a new one (the tables are the DDL's, constraints included)
    with opened.write() as con:
        con.execute("INSERT INTO metadata_columns VALUES ('site', 'text', 0)")
        con.execute("INSERT INTO image_metadata VALUES (0, 'site', 'north', NULL, NULL)")
    with pytest.raises(duckdb.ConstraintException), opened.write() as con:
        con.execute("INSERT INTO metadata_columns VALUES ('when', 'time', 1)")
    assert opened.scalar("SELECT text_value FROM image_metadata WHERE image_id = 0") == "north"
    # and the uploaded split and failure kind of version 7, the old rows kept with their ids
    with opened.write() as con:
        con.execute("INSERT INTO images (image_id, path, split, label) VALUES (1, 'up.png', 'uploaded', 0)")
        con.execute("INSERT INTO failures (failure_id, kind, name, source, source_key, seed, heldout_share) "
                    "VALUES ('f1', 'uploaded', 'u', '{}', 'k', 0, 0.0)")
    assert opened.df("SELECT image_id, path, split FROM images ORDER BY image_id").values.tolist() == [
        [0, "a.png", "train"], [1, "up.png", "uploaded"]]
    with pytest.raises(duckdb.ConstraintException), opened.write() as con:
        con.execute("INSERT INTO images (image_id, path, split, label) VALUES (2, 'b.png', 'holdout', 0)")
    with pytest.raises(duckdb.ConstraintException), opened.write() as con:
        con.execute("INSERT INTO images (image_id, path, split, label) VALUES (0, 'c.png', 'train', 0)")
    assert Workspace.open(tmp_path / "old", read_only=True).schema_version() == 7


def _writer(root: str, n: int, read_done) -> None:
    """``n`` short write transactions, each one only after the other process has finished a read since the
    last one, so reads and writes interleave however fast either side is."""
    ws = Workspace(root)
    for i in range(n):
        if not read_done.wait(60):
            raise TimeoutError(f"no read finished in 60 s before write {i}")
        read_done.clear()
        with ws.write() as con:
            con.execute("INSERT INTO meta VALUES (?, ?)", [f"k{i}", "v"])


def test_reads_and_writes_from_two_processes_all_succeed(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ctx = mp.get_context("spawn")
    read_done = ctx.Event()
    proc = ctx.Process(target=_writer, args=(str(ws.root), 60, read_done))
    proc.start()
    reads = 0
    while proc.is_alive():
        ws.scalar("SELECT count(*) FROM meta")  # must never raise a lock error
        reads += 1
        read_done.set()
    proc.join()
    assert proc.exitcode == 0
    assert reads >= 60  # every write waited for a read that ended after the previous write
    assert ws.scalar("SELECT count(*) FROM meta WHERE key LIKE 'k%'") == 60


def test_job_store_lifecycle_and_dead_process_is_failed(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.init()
    job = store.create("embed", ["--k", "3"])
    assert store.get(job).state == "queued"
    store.start(job, pid=2 ** 22 + 12345)  # no such process
    store.update(job, progress=0.5, message="half")
    # every read reconciles first: the dead job reads as failed at once, keeping its last progress
    failed = store.get(job)
    assert (failed.progress, failed.message) == (0.5, "half")
    assert store.reconcile() == []  # nothing left to reconcile
    assert failed.state == "failed" and "died" in failed.error

    ok = store.create("select", [])
    import os
    store.start(ok, os.getpid())
    assert store.reconcile() == []
    store.finish(ok, "succeeded", result={"n": 3})
    done = store.get(ok)
    assert done.state == "succeeded" and done.progress == 1.0 and done.result == {"n": 3}
    store.update(ok, progress=0.2)  # a finished job no longer moves
    assert store.get(ok).progress == 1.0
