"""Ray job entry point for ``elora add-task`` (same flags; the command comes from this file's name).

    ray job submit --address http://HEAD_IP:8265 --working-dir . -- \
        python jobs/add_task.py --run /shared/runs/x --config /shared/configs/x_plus_new.yaml

The run directory must be on storage every node can see; a killed job resumes when resubmitted.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
