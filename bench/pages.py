"""Benchmark 4: dashboard pages at scale: server-side render time through Streamlit's AppTest.

Every ``pages/*.py`` (discovered, so new pages are measured too) is rendered on the 1M-image workspace:
once cold (empty Streamlit caches), then ``--runs`` more times; the figure is the median of those. The
DuckDB queries a page runs are recorded (``Workspace.read`` is wrapped), re-run alone and timed, and the
slow ones get ``EXPLAIN ANALYZE``.

    python -m bench.pages --root DIR [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import ROOT, write_result

SLOW_QUERY_SECONDS = 0.2


class _Recorder:
    def __init__(self):
        self.page = "app"
        self.queries: dict[tuple[str, str], dict] = {}

    def add(self, sql: str, params) -> None:
        key = (sql, repr(params))
        q = self.queries.setdefault(key, {"sql": sql, "params": params, "pages": set(), "count": 0})
        q["pages"].add(self.page)
        q["count"] += 1


class _ConProxy:
    def __init__(self, con, rec: _Recorder):
        self._con, self._rec = con, rec

    def execute(self, sql, params=None, *a, **kw):
        self._rec.add(sql, params)
        return self._con.execute(sql, params, *a, **kw) if params is not None else self._con.execute(sql, *a, **kw)

    def sql(self, sql, *a, **kw):
        self._rec.add(sql, kw.get("params"))
        return self._con.sql(sql, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _install_recorder(rec: _Recorder) -> None:
    from core.store.workspace import Workspace

    original = Workspace.read

    @contextmanager
    def read(self, *, timeout: float = 60.0):
        with original(self, timeout=timeout) as con:
            yield _ConProxy(con, rec)

    Workspace.read = read


def discover_pages() -> list[str]:
    return sorted(f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_"))


def _explain(root: Path, rec: _Recorder, limit: int = 40) -> list[dict]:
    import duckdb

    out = []
    con = duckdb.connect(str(root / "workspace.duckdb"), read_only=True)
    try:
        for q in list(rec.queries.values())[:400]:
            sql, params = q["sql"], q["params"]
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            try:
                t = time.perf_counter()
                con.execute(sql, params or []).fetchall()
                secs = time.perf_counter() - t
            except Exception as exc:  # a query needing registered tables etc.
                out.append({"sql": sql[:300], "error": str(exc)[:200], "pages": sorted(q["pages"])})
                continue
            item = {"sql": " ".join(sql.split())[:600], "seconds": secs, "pages": sorted(q["pages"]),
                    "count": q["count"]}
            if secs > SLOW_QUERY_SECONDS:
                plan = con.execute("EXPLAIN ANALYZE " + sql, params or []).fetchall()
                item["explain_analyze"] = "\n".join(str(r[-1]) for r in plan)[-6000:]
            out.append(item)
    finally:
        con.close()
    out.sort(key=lambda x: -x.get("seconds", 0))
    return out[:limit]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    os.environ["DCD_WORKSPACE"] = str(args.root)
    os.chdir(ROOT)
    from streamlit.testing.v1 import AppTest

    rec = _Recorder()
    _install_recorder(rec)
    res: dict = {"pages": {}, "runs": args.runs}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=args.timeout)
    t = time.perf_counter()
    at.run()
    res["app_first_run_seconds"] = time.perf_counter() - t
    for page in discover_pages():
        rec.page = page
        times, errors = [], []
        for i in range(args.runs + 1):
            t = time.perf_counter()
            try:
                at.switch_page(page).run()
            except Exception as exc:  # a page that cannot be reached (e.g. not routed by app.py)
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                break
            times.append(time.perf_counter() - t)
            errors += [str(e.message)[:300] for e in at.exception]
        warm = times[1:] or times
        res["pages"][page] = {"cold_seconds": times[0] if times else None,
                              "median_seconds": statistics.median(warm) if warm else None,
                              "all_seconds": times, "errors": sorted(set(errors))}
        print(f"[pages] {page}: cold {times[0] if times else float('nan'):.2f}s, median "
              f"{statistics.median(warm) if warm else float('nan'):.2f}s {'ERRORS' if errors else ''}", flush=True)
    meds = [v["median_seconds"] for v in res["pages"].values() if v["median_seconds"] is not None]
    res["max_median_seconds"] = max(meds) if meds else None
    res["queries"] = _explain(args.root, rec)
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
