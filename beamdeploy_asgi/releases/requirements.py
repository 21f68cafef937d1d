"""Requirements that a release could not install on the host, found at build time.

The host installs an artifact with no index and no network, from its bundled
wheels alone. A requirement pinned to a URL or a local path (``pkg @ url``,
``git+https://...``, ``./libs/pkg``, ``-e .``) names a place the host cannot
reach, so `beamdeploy build` refuses it before collecting anything, naming
the requirement and where it was written.
"""

from __future__ import annotations

import email.parser
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from beamdeploy_asgi.errors import ReleaseError

NAMED_URL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*@")
URL = re.compile(r"^(git|hg|svn|bzr)\+|://|^file:", re.IGNORECASE)
ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".zip")
OPTION = re.compile(r"^(--requirement|--constraint|--editable|-r|-c|-e)[\s=]*(\S.*)$")
NESTED = ("-r", "--requirement", "-c", "--constraint")


@dataclass(frozen=True)
class Requirement:
    text: str
    origin: str  # where it was written, for the error message


def is_direct_reference(text: str) -> bool:
    """`name @ url`, a VCS or other URL, or a local path or archive instead of a version."""
    spec = text.split(";", 1)[0].strip()
    return bool(
        spec.startswith("-e ")  # an editable: always a local path or a VCS URL
        or NAMED_URL.match(spec)
        or URL.search(spec)
        or spec.startswith((".", "/", "~"))
        or spec.lower().endswith(ARCHIVES)
    )


def requirements_file(path: Path, project: Path | None = None) -> list[Requirement]:
    """Every requirement of a pip requirements file, following -r and -c.

    `project` is the directory being built: a line naming it (``-e .``) is
    the project itself, which is built from source anyway, so it is left out.
    """
    found: list[Requirement] = []
    _read(path.resolve(), project, found, [], set())
    return found


def names_project(path: Path, project: Path) -> bool:
    """Whether the requirements file installs the project itself (``-e .``, ``.``)."""
    itself: list[Requirement] = []
    _read(path.resolve(), project, [], itself, set())
    return bool(itself)


def _read(
    path: Path,
    project: Path | None,
    found: list[Requirement],
    itself: list[Requirement],
    seen: set[Path],
) -> None:
    if path in seen:
        return
    seen.add(path)
    for number, line in _logical_lines(path):
        origin = f"{path.name} line {number}"
        option = OPTION.match(line)
        if option and option[1] in NESTED:
            _read((path.parent / option[2].strip()).resolve(), project, found, itself, seen)
            continue
        if option:  # editable: a local path or a VCS URL
            target, text = option[2].strip(), f"-e {option[2].strip()}"
        elif line.startswith("-"):
            continue  # --index-url, --only-binary ...: options, not requirements
        else:
            text = re.split(r"\s--[A-Za-z]", line, maxsplit=1)[0].strip()  # drop --hash=...
            target = text
        mine = _is_project(target, project)
        (itself if mine else found).append(Requirement(text, origin))


def _logical_lines(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) with comments dropped and continuations joined."""
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path} cannot be read: {exc}") from None
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, text in enumerate(raw, 1):
        text = re.sub(r"(^|\s)#.*$", "", text).rstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        joined = (pending + text).strip()
        pending = ""
        if joined:
            lines.append((start, joined))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _is_project(target: str, project: Path | None) -> bool:
    """pip reads a relative path in a requirements file from its working directory,
    which build sets to the project."""
    if project is None or "://" in target or "@" in target:
        return False
    candidate = target.removeprefix("file:").split("[", 1)[0].strip()
    return (project / candidate).resolve() == project.resolve()


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist of a wheel that apply without extras.

    A requirement under an extra is installed only if someone asks for that
    extra; the offline install check catches one that is asked for.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = [
            n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1
        ]
        if not names:
            raise ReleaseError(f"{wheel.name} has no .dist-info/METADATA: not a wheel")
        text = archive.read(names[0]).decode("utf-8", "replace")
    metadata = email.parser.HeaderParser().parsestr(text)
    origin = f"Requires-Dist of {wheel.name}"
    return [
        Requirement(value.strip(), origin)
        for value in metadata.get_all("Requires-Dist") or []
        if "extra" not in value.partition(";")[2]
    ]


def refuse_direct_references(requirements: list[Requirement]) -> None:
    """Raise, naming every direct reference, if there is any."""
    direct = [r for r in requirements if is_direct_reference(r.text)]
    if not direct:
        return
    listed = "\n".join(f"  {r.text}   ({r.origin})" for r in direct)
    raise ReleaseError(
        "the release would not install on the host: these requirements are direct "
        "references (a URL or a local path), and the host installs with no network and "
        f"no package index, from the artifact's wheels alone:\n{listed}\n"
        "Require each by name and version from a package index instead: publish it, or "
        "build its wheel and put it in a directory named by PIP_FIND_LINKS (pip "
        "--find-links), then build again."
    )
