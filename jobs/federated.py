"""Ray job entry point for ``elora federated`` (same flags; the command comes from this file's name).

    ray job submit --working-dir . -- python jobs/federated.py --config benchmarks/configs/federated_shakespeare_smollm2.yaml --out /shared/runs/fed

The run directory should live on storage every node can see.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
