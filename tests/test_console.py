"""Quiet by default: Ray's and libraries' known harmless notices stay off the console unless --verbose,
in the driver and in Ray's workers."""

from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import logging, sys
from elora_ray.raysession import ensure_ray
from elora_ray.runlog import set_verbose, setup_logging
set_verbose(sys.argv[1] == "verbose")
setup_logging(None)
ensure_ray()
import ray

def notice(where):
    # what `kernels` logs when bitsandbytes (imported by peft) asks it for a CPU kernel, offline, on an
    # AVX512-BF16 CPU (every process that builds a decoder's adapter); logged here as it is there
    logging.getLogger("kernels._internals.hf_hub").warning(
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
        "Face Hub is in offline mode (%s).", where)
    return 1

print(ray.data.range(8).map_batches(lambda b: b).count())
notice("driver")
ray.get(ray.remote(notice).remote("worker"))
"""


def _stderr(mode: str) -> str:
    r = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True, text=True, timeout=300,
                       env={"RAY_ADDRESS": "", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": "/tmp"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "8"
    return r.stderr


def test_harmless_ray_notices_are_silenced_unless_verbose():
    quiet, loud = _stderr("quiet"), _stderr("verbose")
    for message in ("Progress bars disabled", "Token authentication is enabled", "Skipping publisher trust check"):
        assert message not in quiet
    assert "Progress bars disabled" in loud  # the filter, not Ray, is what removed it
    assert "offline mode (driver)" in loud and "offline mode (worker)" in loud
