"""Ray job entrypoint for the combine stage (same flags as ``elora combine``).

    ray job submit --working-dir . -- python jobs/combine.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["combine", *sys.argv[1:]]))
