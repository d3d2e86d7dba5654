"""Imported by Python at start-up when this folder is on ``PYTHONPATH`` (tests/replicas.py
puts it there for a replica): ``$SENDER_TEST_HOSTNAME`` becomes the process's host name.
Replicas on one machine then own leases as pods on different hosts do, so a killed
replica's lease is taken over only once it has expired, never at once because its pid is
seen to be gone (sender/lease.py, ``is_dead_local_owner``).
"""

import os
import socket

_NAME = os.environ.get("SENDER_TEST_HOSTNAME")
if _NAME:
    socket.gethostname = lambda: _NAME  # type: ignore[assignment]
