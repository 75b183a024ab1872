"""Ray job entrypoint for the calibrate command (same flags as ``elora calibrate``).

    ray job submit --working-dir . -- python jobs/calibrate.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
