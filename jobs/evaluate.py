"""Ray job entrypoint for the evaluate stage (same flags as ``elora evaluate``).

    ray job submit --working-dir . -- python jobs/evaluate.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
