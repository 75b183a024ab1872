"""Ray job entrypoint for the tune stage (same flags as ``elora tune``).

    ray job submit --working-dir . -- python jobs/tune.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
