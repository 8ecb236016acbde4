"""The HTTP API: a second shell beside cli/ (router/api/app.py)."""
