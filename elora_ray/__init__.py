"""elora_ray: EnsembleLoRA on Ray — fine-tune one language model on many datasets at once."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes logs a warning on import when the optional hub "kernels" package is absent; we
# do not use those kernels (and never reach a hub), so keep it out of users' logs.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
