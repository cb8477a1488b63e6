"""The package version, read from package.xml (the one place it is written)."""
import re
from pathlib import Path


def _read_version() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "package.xml",
                      here.parents[3] / "share" / "bc_policy_node" / "package.xml"
                      if len(here.parents) > 3 else None):
        if candidate is not None and candidate.is_file():
            m = re.search(r"<version>([^<]+)</version>", candidate.read_text())
            if m:
                return m.group(1).strip()
    try:
        from importlib.metadata import version
        return version("bc_policy_node")
    except Exception:  # pragma: no cover - not installed at all
        return "0+unknown"


__version__ = _read_version()
