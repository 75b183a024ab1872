"""Ray job entrypoint for the boost stage (same flags as ``elora boost``).

    ray job submit --working-dir . -- python jobs/boost.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["boost", *sys.argv[1:]]))
