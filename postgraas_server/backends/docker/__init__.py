"""The docker backend: one container per instance, of the configured image or of its prepared image."""

from .backend import DockerBackend

__all__ = ["DockerBackend"]
