"""The deployment history: one JSON line per record, kept small and never torn.

A deployment is written when it starts and again when it ends; the last line
of an id wins, so a deployment the arbiter's death interrupted is still there
(and is marked so at the next start). A write either lands whole or is cut
back, so a full disk costs the record being written and nothing else; and a
line torn by a crash stays on a line of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KEEP = 500  # records kept when the file is compacted
COMPACT_AT = 1024 * 1024  # bytes; ~1,500 records
READ_AT_MOST = 4 * COMPACT_AT


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        """Add `record`; raises OSError (a full disk, say) with the file unchanged."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line must not swallow this one
            try:
                written = os.write(fd, line)
                if written != len(line):
                    os.write(fd, line[written:])  # raises what stopped the first write
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        if size + len(line) > COMPACT_AT:
            self.compact()

    def records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` deployments, newest first, one per id; torn lines are skipped."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self._read():
            key = str(record.get("id"))
            latest.pop(key, None)
            latest[key] = record  # the newest line of an id, in the order it was last written
        return list(reversed(latest.values()))[:limit]

    def compact(self) -> None:
        """Rewrite the file with the newest KEEP records, in one rename."""
        kept = list(reversed(self.records(KEEP)))
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            with open(staging, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o600)
                for record in kept:
                    out.write(json.dumps(record, separators=(",", ":")) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(staging, self.path)
        except OSError:
            staging.unlink(missing_ok=True)
            raise

    def _read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                stream.seek(max(size - READ_AT_MOST, 0))
                data = stream.read(READ_AT_MOST)
        except FileNotFoundError:
            return []
        records = []
        for raw in data.split(b"\n"):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
