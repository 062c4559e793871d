"""The project's own settings in pyproject.toml's ``[tool.onnx-genai-proposals]`` table.

The source tree runs in place (PYTHONPATH, not installed), so it cannot declare entry
points for itself; the plug-ins it wires up by name are listed in that table instead (the
matrix's extra runtimes, the text pipeline's backends and KV-cache formats), which
:mod:`generator.plugins` reads before the entry points of installed packages.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from generator.errors import UsageError

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
TABLE = "onnx-genai-proposals"


def setting_list(key: str, pyproject: Path = PYPROJECT) -> list[str]:
    """``[tool.onnx-genai-proposals] <key>`` as a list of strings ([] when absent or no
    pyproject.toml, as in an installed wheel); anything else is a one-line UsageError."""
    if not pyproject.is_file():
        return []
    try:
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get(TABLE, {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{pyproject} is not valid TOML ({err}); fix it or restore it from git") from None
    values = table.get(key, []) if isinstance(table, dict) else None
    if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
        raise UsageError(f"{pyproject}: [tool.{TABLE}] {key} must be a list of strings")
    return values
