#!/usr/bin/env python3
"""Print one HAProxy server's state as JSON, read from the stats socket.

    haproxy_server_state.py SOCKET BACKEND SERVER

prints {"status": "UP" | "DOWN" | "UP 1/2" | "MAINT" | ..., "sessions": N}:
`status` is HAProxy's view of the server (from its health checks), `sessions`
the requests it has with the server right now. Standard library only, so it
runs on any host Ansible manages.
"""

import csv
import io
import json
import socket
import sys


def show_stat(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"show stat\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)


def main() -> None:
    path, backend, server = sys.argv[1:4]
    text = show_stat(path).lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") == server:
            print(json.dumps({"status": row["status"], "sessions": int(row["scur"] or 0)}))
            return
    sys.exit(f"no server {server!r} in backend {backend!r} on {path}")


if __name__ == "__main__":
    main()
