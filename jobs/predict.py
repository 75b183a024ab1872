"""Ray job entrypoint for predictions with a finished run (same flags as ``elora predict``).

    ray job submit --working-dir . -- python jobs/predict.py --run /shared/runs/x --task sst2 --input /shared/in.jsonl
"""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
