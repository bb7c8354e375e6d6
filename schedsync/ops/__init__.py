"""Operations on top of the application layer: ``serve`` (the read-only HTTP server),
``metrics`` (Prometheus exposition), ``crontab`` and ``drift`` (the crontab and its check),
``systemd`` (unit files: serve, and timers for the tick or one job).

``ops`` may import ``app`` and everything below it; nothing below ``ops`` imports it
(``tests/test_architecture.py``: ``LAYERS``). Alerts are not here: they are called by
``app`` and so sit below it, in ``schedsync.notify``.
"""
