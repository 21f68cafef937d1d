"""The admin token the tests configure, and the header that carries it."""

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
