"""Numbered SQL migrations (backend/migrate.py applies them)."""
