"""``elora serve``: a finished run's ensemble behind HTTP, as a Ray Serve application.

Two deployments (:mod:`elora_ray.serve.app`): a light FastAPI ingress (``EloraIngress``) that
validates every request against the run's tasks and limits, and the model (``EloraModel``, one
:class:`~elora_ray.ensemble.predictor.EnsemblePredictor` per replica) that batches the texts of
concurrent requests with ``@serve.batch``. The ingress re-sends a request whose model replica
died, so a killed replica costs latency, not answers.

Needs the ``serve`` extra (``pip install -e '.[serve]'``); importing this package does not load
Ray Serve, only :mod:`elora_ray.serve.app` does. Request parsing (:mod:`.requests`), options
(:mod:`.options`) and run metadata (:mod:`.metadata`) are plain Python.
"""
