"""The Redis provider: a race-proof store and a delayed-queue transport on one Redis.

Standalone, Cluster, Sentinel and TLS deployments are served by the same Lua scripts; every key a
script touches shares one hash tag, so every script runs in one slot. The entry module
``plugin.py`` imports only dtimeout; redis-py is imported when a factory runs.
"""
