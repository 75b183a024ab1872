"""Ray job entrypoint for the baselines stage (same flags as ``elora baselines``).

    ray job submit --working-dir . -- python jobs/baselines.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["baselines", *sys.argv[1:]]))
