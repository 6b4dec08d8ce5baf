"""The swarm backend: one Docker Swarm service of one task per instance, placed by Swarm."""

from .backend import SwarmBackend

__all__ = ["SwarmBackend"]
