from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str]:
    """Environment in which no package index answers and no package cache helps."""
    dead = "http://127.0.0.1:9/simple"
    return {
        "PIP_INDEX_URL": dead,
        "UV_INDEX_URL": dead,
        "UV_DEFAULT_INDEX": dead,
        "UV_CACHE_DIR": str(tmp_path / "empty-uv-cache"),
        "PIP_NO_CACHE_DIR": "1",
    }
