from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.artifacts import Artifacts
from tests.support.releases import ReleaseFactory, build_wheel, versioned_app
from tests.support.server import ServerProcess


@pytest.fixture(scope="session")
def release_factory(tmp_path_factory: pytest.TempPathFactory) -> ReleaseFactory:
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    return ReleaseFactory(tmp_path_factory.mktemp("releases"), wheel)


class Releases:
    """Standard releases v1, v2, v3 built once per run, plus custom ones."""

    def __init__(self, factory: ReleaseFactory) -> None:
        self.factory = factory
        self.built: dict[str, Path] = {}

    def __getitem__(self, version: str) -> Path:
        if version not in self.built:
            self.built[version] = self.factory.make(version, versioned_app(version))
        return self.built[version]

    def custom(self, key: str, source: str, **kwargs: object) -> Path:
        if key not in self.built:
            self.built[key] = self.factory.make(key, source, **kwargs)
        return self.built[key]


@pytest.fixture(scope="session")
def releases(release_factory: ReleaseFactory) -> Releases:
    return Releases(release_factory)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start an arbiter; every one started is stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(*args: str, launch: bool = True, **kwargs: object) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(started)}", list(args), **kwargs)
        started.append(server)
        if launch:
            server.start()
        return server

    yield start
    for server in started:
        server.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {server.log_path} (last 60 lines) ---")
        print("\n".join(server.log().splitlines()[-60:]))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return Artifacts(tmp_path_factory.mktemp("artifacts"))


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
