"""Ray job entrypoint for the cluster stage (same flags as ``elora cluster``).

    ray job submit --working-dir . -- python jobs/cluster.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
