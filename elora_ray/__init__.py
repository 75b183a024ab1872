"""elora_ray: EnsembleLoRA on Ray — fine-tune one language model on many datasets at once."""

__version__ = "0.1.0"
