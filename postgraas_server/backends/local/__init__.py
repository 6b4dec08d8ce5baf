"""The local backend: a PostgreSQL cluster per instance, run as processes on the server's host."""

from .backend import LocalBackend
from .server_processes import INSTANCE_PROGRAMS, find_bin_dir

__all__ = ["INSTANCE_PROGRAMS", "LocalBackend", "find_bin_dir"]
