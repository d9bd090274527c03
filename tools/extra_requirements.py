"""Print the requirements of one pyproject extra, one per line, the project's own extras expanded.

Stdlib only: the image builds run it before anything is installed (so that the dependencies get a
layer of their own, cached until pyproject.toml changes), and tools/make_wheelhouse.sh runs it to
fetch the same wheels on the host.

    python3 tools/extra_requirements.py server [pyproject.toml]
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict[str, object], extra: str) -> list[str]:
    """The project's dependencies plus ``extra``'s, with ``name[other]`` entries expanded."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"no extra {extra!r} in pyproject.toml; one of: {', '.join(extras)}")
    self_prefix = f"{project['name']}["

    def expand(reqs: list[str]) -> list[str]:
        out: list[str] = []
        for req in reqs:
            if req.startswith(self_prefix):
                for name in req[len(self_prefix) : req.index("]")].split(","):
                    out += expand(extras[name.strip()])
            elif req not in out:
                out.append(req)
        return out

    return expand([*project.get("dependencies", []), *extras[extra]])


def main(argv: list[str]) -> int:
    extra = argv[0] if argv else "server"
    path = Path(argv[1]) if len(argv) > 1 else Path("pyproject.toml")
    print("\n".join(requirements(tomllib.loads(path.read_text()), extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
