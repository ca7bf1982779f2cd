"""delivery: this frontend's local sockets: the index by id, user and group, one bounded
outbox and writer per socket, and the fan-out of a ready frame to the matching ones.

May import: ``service.core``.
"""
