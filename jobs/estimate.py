"""Ray job entrypoint for the estimate stage (same flags as ``elora estimate``).

    ray job submit --working-dir . -- python jobs/estimate.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["estimate", *sys.argv[1:]]))
