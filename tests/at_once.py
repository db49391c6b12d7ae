"""Threads that start the same moment in a fresh Python process: for races that only a process's
first imports show (two sessions' first page runs, two models opened at once)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, threading
{setup}
args = sys.argv[1:]
start, errors = threading.Barrier(len(args)), []
def one(arg):
    start.wait()
    try:
        {call}
    except Exception as e:
        errors.append(f"{{arg}}: {{type(e).__name__}}: {{e}}")
threads = [threading.Thread(target=one, args=(a,)) for a in args]
[t.start() for t in threads]
[t.join() for t in threads]
print("ERRORS:", errors)
"""


def at_once(setup: str, call: str, args: list[str]) -> list[str] | str:
    """Run ``setup`` (statements) in a fresh process, then ``call`` (one statement of ``arg``)
    for every one of ``args``, each in a thread of its own released at the same moment. Returns
    the calls' errors ("arg: Type: message"), or the process's output when it failed otherwise."""
    code = SCRIPT.format(setup=setup, call=call)
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in run.stdout.splitlines():
        if line.startswith("ERRORS: "):
            return eval(line[len("ERRORS: "):], {})  # a list of strings this script printed
    return run.stdout + run.stderr[-2000:]
