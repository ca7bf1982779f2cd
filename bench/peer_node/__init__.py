"""The Node.js peer: socket.io 4.8 with the Redis Streams adapter (bench/peer_node/).

``server.js`` and ``publisher.js`` run under node from ``node_modules`` installed by
``npm ci`` from ``package-lock.json``; ``cluster`` runs in Herald's venv and starts them.
"""
