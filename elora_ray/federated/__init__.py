"""The federated setting: FedAvg over many clients, and the federated EnsembleLoRA (``elora federated``)."""
