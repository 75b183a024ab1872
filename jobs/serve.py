"""Ray job entry point for ``elora serve`` (same flags; the command comes from this file's name).

    ray job submit --address http://HEAD_IP:8265 --working-dir . -- \
        python jobs/serve.py --run /shared/runs/x --host 0.0.0.0 --port 8000 --replicas 2 --num-gpus 1

The job deploys the application on the cluster and serves until it is stopped (``ray job stop``);
``--detach`` leaves the application deployed and ends the job. The run directory must be on storage
every node can see.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
