"""schedsync: run cron jobs once, safely, and say what happened."""

__version__ = "0.1.0"
USER_AGENT = f"schedsync/{__version__} (+https://github.com/schedsync/schedsync)"
