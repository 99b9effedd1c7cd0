"""The live operator page: a Starlette app served by the backend (docs/operator-page.md)."""
