"""The runpod SDK is imported without the child Python py-cpuinfo starts (and the second it sleeps) to name the CPU,
and without the logging its import sets up (``logging.basicConfig(level=INFO)`` in its upload module).

(py-cpuinfo's own import still asks `file` and `uname` about the platform: milliseconds.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import subprocess

    started = []
    real = subprocess.Popen.__init__

    def spy(self, args, *rest, **kwargs):
        started.append(args)
        return real(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = spy
    import logging
    import cpuinfo
    before = cpuinfo.get_cpu_info
    from deploy.pods.api import _sdk
    runpod = _sdk()
    from runpod.api.graphql import run_graphql_query
    assert cpuinfo.get_cpu_info is before, "py-cpuinfo was left patched"
    root = logging.getLogger()
    assert root.handlers == [] and root.level == logging.WARNING, (root.handlers, root.level)
    assert callable(run_graphql_query) and hasattr(runpod, "api_key")
    pythons = [a for a in started if "python" in str(a[0] if isinstance(a, (list, tuple)) else a).lower()]
    print(len(pythons), pythons)
""")


def test_importing_the_sdk_starts_no_python_and_leaves_cpuinfo_and_logging_as_they_were() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 "), f"importing runpod started a Python: {done.stdout}"
