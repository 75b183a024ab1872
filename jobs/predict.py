"""Ray job entry point for ``elora predict`` (same flags; the command comes from this file's name).

    ray job submit --working-dir . -- python jobs/predict.py --run /shared/runs/x --task sst2 --input /shared/in.jsonl

The run directory should live on storage every node can see.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
