"""Herald's frontend and the parts every role shares, in layers (each package says what it
owns and may import; ``.ci/importlinter.ini`` checks it):

    app, server, pg        the application factory, gunicorn, the Python API
    http | sockets         the HTTP API; the WebSocket endpoint
    cluster                the publish pipeline and a frontend's node
    delivery               this frontend's local sockets
    store | bus            Postgres (registry and log); the bus (amqp://, memory://)
    core                   settings, errors, names and envelopes, tokens, limits
"""
