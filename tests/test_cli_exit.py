"""The command line's process ends right after ``main`` (``quant_assets.cli.run``): the exit
code, what was printed, and the work of threads still running and of the exit handlers must
all survive skipping the interpreter's teardown."""

import subprocess
import sys
import textwrap


def test_run_keeps_the_exit_code_the_output_and_the_exit_handlers(tmp_path):
    marker = tmp_path / "handler-ran"
    log = tmp_path / "command.log"
    thread_file = tmp_path / "thread"
    script = textwrap.dedent(f"""
        import atexit, logging, sys, threading, time
        from quant_assets import cli

        handler = logging.FileHandler({str(log)!r})  # buffered until logging's exit handler
        logging.getLogger("command").addHandler(handler)
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))

        def late():  # a non-daemon thread still at work when main returns
            time.sleep(1.0)
            open({str(thread_file)!r}, "w").write("finished")

        def main():
            threading.Thread(target=late).start()
            logging.getLogger("command").warning("written by the command")
            sys.stdout.write("no newline, never flushed by the command")
            return 3

        cli.main = main
        cli.run()
        raise AssertionError("run() returned")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, never flushed by the command"
    assert marker.read_text() == "ran"
    assert thread_file.read_text() == "finished"
    assert log.read_text().strip() == "written by the command"


def test_both_entry_points_go_through_run():
    import importlib.metadata

    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "quant-assets"]
    assert script.value == "quant_assets.cli:run"
    # python -m quant_assets
    probe = ("import runpy, quant_assets.cli as cli; cli.run = lambda: print('through run'); "
             "runpy.run_module('quant_assets', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "through run\n", done.stderr
