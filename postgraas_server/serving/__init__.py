"""How `postgraas-server serve` talks HTTP: a gunicorn worker that gives a request a thread only once
all of it has arrived, under deadlines (docs/serving.md).

limits.py      the deadlines and sizes, from application.cfg
connection.py  one client: h11 reads whole requests on the event loop, writes the answers
wsgi.py        the PEP 3333 environ, and the app called in a pool thread
answers.py     an answer as written, and the worker's own JSON refusals
server.py      the connections of a process, its thread pool, eviction at capacity, the graceful stop
worker.py      the gunicorn worker class around them
"""

from .limits import Limits
from .server import HttpServer

__all__ = ["HttpServer", "Limits"]
