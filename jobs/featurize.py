"""Ray job entrypoint for the featurize stage (same flags as ``elora featurize``).

    ray job submit --working-dir . -- python jobs/featurize.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
