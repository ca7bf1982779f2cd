"""cluster: the cluster core. The one publish pipeline (log first when durable, then the
bus), and a frontend's node: its receive path (bus → local delivery), presence, control
messages, registry heartbeats and the bus-gap replay.

May import: ``service.core``, ``service.store``, ``service.bus``, ``service.delivery``.
"""
