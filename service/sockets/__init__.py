"""sockets: the WebSocket endpoint ``/ws``: the upgrade, the session from ``hello`` to
close and its op handlers, welcome and resume, the client frame schemas.

May import: ``service.cluster`` and everything below it; ``workers.client`` (task starts).
"""
