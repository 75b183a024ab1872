"""Ray job entrypoint for the prepare stage (same flags as ``elora prepare``)."""

import sys

from elora_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
