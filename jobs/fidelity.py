"""Ray job entrypoint for the fidelity stage (same flags as ``elora fidelity``).

    ray job submit --working-dir . -- python jobs/fidelity.py --config my.yaml --out /shared/runs/x
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["fidelity", *sys.argv[1:]]))
