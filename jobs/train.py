"""Ray job entrypoint for the train stage (same flags as ``elora train``).

    ray job submit --working-dir . -- python jobs/train.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
