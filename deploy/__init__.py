"""gpu-deploy: take a PyTorch Lightning training job to any SSH GPU host, with S3 as the durable store.

The library behind the `fab` tasks: typed, importable from plain Python, no task decorators.
"""

__version__ = "0.1.0"
