"""``make test`` deals the end-to-end modules to its workers first.

The order comes from ``pytest_collection_modifyitems`` in tests/conftest.py; xdist keeps it
only with ``--no-loadscope-reorder`` (by default it deals the modules with the most tests
first). Checked with the Makefile's own pytest options and the real xdist, on a small
project: one worker, a quick module of many tests collected first, then a module of one
``slow`` test; the slow one must run first.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_test_pytest_options() -> list[str]:
    """The pytest options of `make test` (without $(PYTEST_ARGS)), as make expands them."""
    printed = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C", str(REPO), "test", "PYTEST_ARGS="],
                             capture_output=True, text=True, check=True).stdout
    command = next(line for line in printed.splitlines() if " -m pytest " in line)
    return shlex.split(command.split(" -m pytest ", 1)[1].split(";", 1)[0])


def ordering_hook_source() -> str:
    """tests/conftest.py's `pytest_collection_modifyitems`, as text. Not imported: the name
    `conftest` may be another folder's conftest, and running this one again would move
    QUANT_HOME under the other tests of this worker."""
    source = (REPO / "tests" / "conftest.py").read_text()
    hook = next(node for node in ast.parse(source).body
                if isinstance(node, ast.FunctionDef) and node.name == "pytest_collection_modifyitems")
    return ast.get_source_segment(source, hook) + "\n"


def test_make_test_deals_the_end_to_end_modules_first(tmp_path):
    options = make_test_pytest_options()
    assert "-n" in options and "--dist" in options
    options[options.index("-n") + 1] = "1"  # one worker: the dealing order is the running order
    order = tmp_path / "order.txt"
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: end-to-end\n")
    (tmp_path / "conftest.py").write_text(ordering_hook_source())
    record = f"open({str(order)!r}, 'a').write(__name__ + '\\n')"
    (tmp_path / "test_a_quick.py").write_text(
        "".join(f"def test_{i}():\n    {record}\n" for i in range(5)))
    (tmp_path / "test_b_end_to_end.py").write_text(textwrap.dedent(f"""\
        import pytest

        @pytest.mark.slow
        def test_flow():
            {record}
        """))
    run = subprocess.run([sys.executable, "-m", "pytest", *options, "-q", "-p", "no:cacheprovider", "-c",
                          str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    ran = order.read_text().split()
    assert len(ran) == 6 and ran[0] == "test_b_end_to_end", ran
