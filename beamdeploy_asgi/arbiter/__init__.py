"""The arbiter side: one long-lived process that owns sockets and generations."""
