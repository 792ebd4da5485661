"""An example dtimeout provider (``example://NAME``); see ``plugin.py``."""
