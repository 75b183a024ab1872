"""Ray job entry point for ``elora remove-task`` (same flags; the command comes from this file's name).

    ray job submit --address http://HEAD_IP:8265 --working-dir . -- \
        python jobs/remove_task.py --run /shared/runs/x --task old_task

The run directory must be on storage every node can see; a killed job resumes when resubmitted.
"""

import sys

from elora_ray.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main(__file__, sys.argv[1:]))
