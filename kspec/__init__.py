"""kspec: a declarative spec compiler and formal verifier for Kubernetes networking."""

__version__ = "0.1.0"
