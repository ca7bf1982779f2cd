"""core: what every part of Herald shares and nothing else: settings (``config``), the
error hierarchy, names, targets and envelopes (``envelope``), tokens and grants (``auth``),
limits and quotas, presence data, metrics counters, logging set-up.

May import: nothing of Herald's but itself.
"""
