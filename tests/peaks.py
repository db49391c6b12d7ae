"""Peak memory of a piece of code, measured in a fresh interpreter, for the tests that check
a memory estimate against the truth (at most 25% below it).

Linux: the peak resident set (VmHWM in /proc/self/status) is reset after the set-up (writing
5 to /proc/self/clear_refs), so it counts the measured code alone, above the RSS it started
from."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

PEAK_SCRIPT = """
import json
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
{setup}
base = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) counts from here
{run}
print(json.dumps({{'peak': status('VmHWM') - base, 'estimate': estimate}}))
"""


def measured_peak(setup: str, run: str) -> tuple[int, int]:
    """(peak RSS of ``run`` above the RSS before it, the ``estimate`` that ``setup`` or ``run``
    sets), in bytes, in a fresh interpreter after ``setup`` (imports and warm-up, not counted)."""
    code = PEAK_SCRIPT.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["peak"], out["estimate"]
