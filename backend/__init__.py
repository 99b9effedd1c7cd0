"""kidsafe-backend: the reference backend (MQTT -> PostgreSQL, signed receipts); docs/backend.md."""
