"""store: Postgres, through SQLAlchemy 2: the models, the registry (frontends, connections,
memberships) with its batching writer, the durable message log and its replay.

May import: ``service.core``.
"""
