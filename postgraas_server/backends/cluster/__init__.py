"""The cluster backend: a role and a database per instance inside an existing PostgreSQL server."""

from .backend import ClusterBackend

__all__ = ["ClusterBackend"]
