"""http: the HTTP API for backends (``/api``), its OpenAPI document, the demo page.

May import: ``service.cluster`` and everything below it; ``workers.client`` (task starts).
"""
