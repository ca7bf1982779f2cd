"""The peer: a plain Flask-SocketIO service to compare Herald with (runs in bench/.venv-peer).

``app`` and ``publisher`` run in the peer's own virtualenv; ``cluster`` runs in Herald's and
starts them.
"""
