"""Ray job entrypoint for the whole pipeline.

    ray job submit --working-dir . -- python jobs/run_pipeline.py --config my.yaml --out /shared/runs/x

Same flags as ``elora run``; the run directory should live on storage every node can see.
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
