"""The command line's process ends right after ``main`` (``quant_assets.cli.run``), without
the interpreter's teardown: the exit code, what was printed, the work of threads still
running and of the exit handlers must all survive it, and it must end even when a thread
pool is left alive."""

import sqlite3
import subprocess
import sys
import textwrap

import pytest


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout)


def test_run_keeps_the_exit_code_the_output_the_threads_and_the_exit_handlers(tmp_path):
    marker, log, thread_file, teardown = (tmp_path / n for n in ("handler", "log", "thread", "teardown"))
    done = _run(f"""
        import atexit, logging, logging.handlers, sys, threading, time
        from quant_assets import cli

        # records held in memory until the handler is closed, which logging's exit handler does
        held = logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1,
                                              target=logging.FileHandler({str(log)!r}))
        logging.getLogger("command").addHandler(held)
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))

        class Teardown:  # finalised only by the interpreter's teardown, which run() skips
            def __del__(self):
                open({str(teardown)!r}, "w").write("ran")

        KEPT = Teardown()

        def late():  # a non-daemon thread still at work when main returns
            time.sleep(1.0)
            open({str(thread_file)!r}, "w").write("finished")

        def main():
            threading.Thread(target=late).start()
            logging.getLogger("command").warning("written by the command")
            sys.stdout.write("no newline, never flushed by the command")
            sys.stderr.write("to stderr, never flushed")
            return 3

        cli.main = main
        cli.run()
        raise AssertionError("run() returned")
    """)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, never flushed by the command"
    assert done.stderr.endswith("to stderr, never flushed")
    assert marker.read_text() == "ran"
    assert thread_file.read_text() == "finished"
    assert log.read_text().strip() == "written by the command"
    assert not teardown.exists()  # the teardown was skipped


def test_run_ends_with_a_thread_pool_left_alive():
    # concurrent.futures' idle workers are non-daemon threads that stop only when threading's
    # exit hook tells them to (MLflow's artifact repositories keep such a pool)
    done = _run("""
        from concurrent.futures import ThreadPoolExecutor
        from quant_assets import cli

        POOL = ThreadPoolExecutor(2)

        def main():
            POOL.submit(print, "task done").result()
            return 0

        cli.main = main
        cli.run()
    """, timeout=60)
    assert done.returncode == 0 and done.stdout == "task done\n", done.stderr


def test_a_kept_sqlite_database_holds_its_commits_in_its_file_at_exit(tmp_path):
    # the local instance keeps an idle connection per SQLite file (quant_assets.instance): with
    # no teardown, only its exit handler checkpoints the WAL into the database file
    db = tmp_path / "runs.db"
    done = _run(f"""
        import sqlalchemy
        from quant_assets import cli
        from quant_assets.instance import relax_local_sqlite

        def main():
            relax_local_sqlite({str(tmp_path)!r})
            # a connection per operation, as Dagster's SQLite storages open them
            engine = sqlalchemy.create_engine("sqlite:///{db}", poolclass=sqlalchemy.pool.NullPool)
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            with engine.begin() as conn:  # a new connection: the keeper opens beside it
                conn.exec_driver_sql("INSERT INTO t VALUES (1), (2), (3)")
            return 0

        cli.main = main
        cli.run()
    """)
    assert done.returncode == 0, done.stderr
    alone = tmp_path / "copy" / "runs.db"  # the database file copied without its -wal
    alone.parent.mkdir()
    alone.write_bytes(db.read_bytes())
    with sqlite3.connect(alone) as conn:
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (6,)


def test_both_entry_points_go_through_run():
    import importlib.metadata

    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "quant-assets"]
    assert script.value == "quant_assets.cli:run"
    # python -m quant_assets
    done = _run("""
        import runpy, quant_assets.cli as cli
        cli.run = lambda: print("through run")
        runpy.run_module("quant_assets", run_name="__main__")
    """)
    assert done.returncode == 0 and done.stdout == "through run\n", done.stderr


pytestmark = pytest.mark.filterwarnings("ignore")
