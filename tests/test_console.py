"""Quiet by default: Ray's known harmless notices stay off the console unless --verbose."""

from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import sys
from elora_ray.raysession import ensure_ray
from elora_ray.runlog import set_verbose
set_verbose(sys.argv[1] == "verbose")
ensure_ray()
import ray
print(ray.data.range(8).map_batches(lambda b: b).count())
"""


def _stderr(mode: str) -> str:
    r = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True, text=True, timeout=300,
                       env={"RAY_ADDRESS": "", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": "/tmp"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "8"
    return r.stderr


def test_harmless_ray_notices_are_silenced_unless_verbose():
    quiet, loud = _stderr("quiet"), _stderr("verbose")
    for message in ("Progress bars disabled", "Token authentication is enabled"):
        assert message not in quiet
    assert "Progress bars disabled" in loud  # the filter, not Ray, is what removed it
