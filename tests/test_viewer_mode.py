"""The viewer mode (``--read-only``, ``make view``): every page shows the workspace and offers nothing that
changes it, and a walk through every page leaves the workspace's files as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.store.schema import SCHEMA_VERSION
from core.store.workspace import ReadOnlyWorkspaceError, Workspace

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PAGES = ("pages/overview.py", "pages/errors.py", "pages/slices.py", "pages/retrieval.py", "pages/jobs.py",
         "pages/compare.py")


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the workspace's DuckDB file, its job table, its artifacts)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def controls(at: AppTest) -> list[str]:
    """What a person could act with on the page shown: buttons (launch, save, cancel, decide, confirm), forms'
    submit buttons, decision toggles and the workspace path box."""
    found = [f"button {b.label!r}" for b in at.button]
    found += [f"{kind} {getattr(w, 'label', '')!r}" for kind in ("segmented_control", "form_submit_button")
              for w in at.get(kind)]
    return found


def walk(monkeypatch, root: Path, *, read_only: bool) -> dict[str, list[str]]:
    """Open every page of the app on ``root``; the controls each offers."""
    monkeypatch.setenv("DCD_WORKSPACE", str(root))
    monkeypatch.setenv("DCD_READ_ONLY", "1" if read_only else "")
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120).run()
    out = {"sidebar": [f"text_input {t.label!r}" for t in at.sidebar.text_input]}
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        out[page] = controls(at)
    return out


@pytest.mark.slow
def test_viewer_mode_offers_no_control_and_changes_no_file(sliced_copy, monkeypatch):
    ws = sliced_copy[0]
    ws.jobs().finish(ws.jobs().create("slices", ["--slices", "4"]), "succeeded", result={"n_slices": 4})
    full = walk(monkeypatch, ws.root, read_only=False)
    # the full app offers controls on every page but Before / after (downloads only), so the check sees them
    assert all(found for page, found in full.items() if page != "pages/compare.py"), full
    assert full["sidebar"] == ["text_input 'Workspace folder'"]
    before = checksums(ws.root)
    viewed = walk(monkeypatch, ws.root, read_only=True)
    assert viewed == {page: [] for page in ("sidebar", *PAGES)}
    assert checksums(ws.root) == before


def test_a_read_only_workspace_refuses_every_write(sliced_copy):
    ws = Workspace.open(sliced_copy[0].root, read_only=True)
    assert ws.class_names()  # reads work
    with pytest.raises(ReadOnlyWorkspaceError, match="read-only"):
        with ws.write() as con:
            con.execute("DELETE FROM classes")
    with pytest.raises(ReadOnlyWorkspaceError, match="read-only"):
        ws.jobs().create("slices", [])
    assert ws.jobs().reconcile() == []
    assert not ws.cache_dir("thumbs").is_relative_to(ws.root)


def test_an_older_schema_is_not_upgraded_by_a_viewer(sliced_copy):
    root = sliced_copy[0].root
    with Workspace.open(root).write() as con:
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        con.execute("ALTER TABLE selections RENAME COLUMN neighbours TO k")
    from core.store.workspace import SchemaVersionError

    with pytest.raises(SchemaVersionError, match="without --read-only"):
        Workspace.open(root, read_only=True)
    assert Workspace.open(root).schema_version() == SCHEMA_VERSION  # a normal open upgrades it
