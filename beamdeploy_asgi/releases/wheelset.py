"""The bundled wheels, checked to be a complete set before any venv is made.

The host installs an artifact's wheels with ``--no-deps``: the installer then
resolves nothing, fetches nothing and builds nothing. What it would have
checked is checked here instead, from each wheel's metadata: every
requirement of every wheel is met by a bundled wheel, and none is a direct
reference (``pkg @ http://...``), which would make an installer fetch and
build code from wherever it points.
"""

from __future__ import annotations

import email.parser
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

MAX_METADATA = 1024 * 1024


@dataclass(frozen=True)
class Wheel:
    file: str
    name: NormalizedName
    version: Version
    requires: tuple[str, ...]


def check_wheel_set(wheels: list[Path], python_version: str) -> None:
    """Raise ValueError naming the first requirement the bundled wheels do not meet."""
    bundled: dict[NormalizedName, Wheel] = {}
    for path in wheels:
        wheel = read_wheel(path)
        if wheel.name in bundled:
            raise ValueError(
                f"two wheels of {wheel.name}: {bundled[wheel.name].file} and {wheel.file}"
            )
        bundled[wheel.name] = wheel
    environment: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    environment["python_version"] = python_version
    # Every wheel is installed, so each one's own requirements must hold; an
    # extra somebody asks for adds that wheel's requirements under it.
    wanted = [(wheel, "") for wheel in bundled.values()]
    done: set[tuple[str, str]] = set()
    while wanted:
        wheel, extra = wanted.pop()
        if (wheel.name, extra) in done:
            continue
        done.add((wheel.name, extra))
        for text in wheel.requires:
            requirement = _parse(text, wheel)
            if requirement.marker is not None and not requirement.marker.evaluate(
                {**environment, "extra": extra}
            ):
                continue
            if extra and requirement.marker is None:
                continue  # a base requirement, checked with extra ""
            provider = _provider(requirement, bundled, wheel)
            wanted += [(provider, canonicalize_name(e)) for e in requirement.extras]


def read_wheel(path: Path) -> Wheel:
    """Name, version and Requires-Dist of a wheel, reading a bounded amount of it."""
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise ValueError(f"{path.name} is not a wheel: {exc}") from None
    try:
        with zipfile.ZipFile(path) as archive:
            found = [
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
            ]
            if len(found) != 1:
                raise ValueError(f"{path.name} has {len(found)} .dist-info/METADATA files, not 1")
            if found[0].file_size > MAX_METADATA:
                raise ValueError(f"{path.name}: its METADATA is over {MAX_METADATA} bytes")
            with archive.open(found[0]) as stream:
                text = stream.read(MAX_METADATA + 1)[:MAX_METADATA].decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path.name} is not a readable wheel: {exc}") from None
    metadata = email.parser.HeaderParser().parsestr(text)
    if canonicalize_name(metadata.get("Name") or "") != name:
        raise ValueError(f"{path.name}: its metadata names {metadata.get('Name')!r}")
    requires = tuple(value.strip() for value in metadata.get_all("Requires-Dist") or [])
    return Wheel(path.name, name, version, requires)


def _parse(text: str, wheel: Wheel) -> Requirement:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{wheel.file} requires {text!r}, which cannot be read: {exc}") from None
    if requirement.url:
        raise ValueError(
            f"{wheel.file} requires {text!r}: a direct reference, which the host never "
            "follows (it installs the artifact's wheels only)"
        )
    return requirement


def _provider(requirement: Requirement, bundled: dict[NormalizedName, Wheel], by: Wheel) -> Wheel:
    provider = bundled.get(canonicalize_name(requirement.name))
    if provider is None:
        raise ValueError(
            f"{by.file} requires {requirement}, and the artifact bundles no wheel of "
            f"{requirement.name}"
        )
    if not requirement.specifier.contains(provider.version, prereleases=True):
        raise ValueError(
            f"{by.file} requires {requirement}, and the artifact bundles {provider.file}"
        )
    return provider
