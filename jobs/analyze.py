"""Ray job entrypoint for the analyses (same arguments as ``elora analyze``).

    ray job submit --working-dir . -- python jobs/analyze.py sharpness --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
