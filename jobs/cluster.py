"""Ray job entry point for ``elora cluster`` (same flags; the command comes from this file's name).

    ray job submit --working-dir . -- python jobs/cluster.py --config my.yaml --out /shared/runs/x

The run directory should live on storage every node can see.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
