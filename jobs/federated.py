"""Ray job entrypoint for the federated run (same flags as ``elora federated``).

    ray job submit --working-dir . -- python jobs/federated.py \
        --config configs/federated_shakespeare_smollm2.yaml --out /shared/runs/fed
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["federated", *sys.argv[1:]]))
