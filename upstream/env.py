"""``python -m upstream.env``: the upstream virtualenv, ``.venv-upstream``.

It holds only the onnx-weekly pin; every other package is read from ``.venv`` through a
``.pth`` file placed after the weekly's own site-packages, so the two environments differ in
onnx alone and ``.venv`` is never written. Without the registry (or with the weekly missing
from it) it prints one line saying what to install and exits 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ONNX_WEEKLY = "onnx-weekly==1.24.0.dev20261026"  # GroupedMatMul-29 (onnx 1.24, planned 2026-12-14)
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-upstream"
OVERLAY = "_onnx_genai_proposals_base.pth"


def site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def installed_weekly(prefix: Path) -> str | None:
    """The onnx-weekly version installed in ``prefix`` (its dist-info), if any."""
    found = sorted(site_packages(prefix).glob("onnx_weekly-*.dist-info"))
    return found[-1].name.removeprefix("onnx_weekly-").removesuffix(".dist-info") if found else None


def create(prefix: Path = VENV, pin: str = ONNX_WEEKLY) -> int:
    """Create or refresh ``prefix``; 0 when ready, 2 (one line on stderr) when the pin can't be had."""
    wanted = pin.partition("==")[2]
    if installed_weekly(prefix) != wanted:
        venv.EnvBuilder(with_pip=False, clear=prefix.exists()).create(prefix)
        python = prefix / "bin" / "python"
        install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", pin]
        done = subprocess.run(install, capture_output=True, text=True)
        if done.returncode != 0 or installed_weekly(prefix) != wanted:
            print(
                f"make upstream: cannot install {pin} (no access to PyPI, or the pin is gone); install it with "
                f"`.venv/bin/python -m pip --python {prefix.name}/bin/python install --no-deps {pin}` "
                "(or PIP_FIND_LINKS=<folder with its wheel>), then rerun make upstream",
                file=sys.stderr,
            )
            return 2
    site = site_packages(prefix)
    # every other package from .venv, read-only, after the weekly's own site-packages
    base = Path(sysconfig.get_path("purelib"))
    (site / OVERLAY).write_text(f"import site; site.addsitedir({str(base)!r})\n")
    # onnx.__version__ reads the "onnx" distribution first: name the weekly so, ahead of .venv's onnx
    alias = site / f"onnx-{wanted}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: onnx\nVersion: {wanted}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upstream.env", description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=VENV, help="where to create it (default: .venv-upstream)")
    parser.add_argument("--pin", default=ONNX_WEEKLY, help=f"the requirement to install (default: {ONNX_WEEKLY})")
    args = parser.parse_args(argv)
    return create(args.venv.resolve(), args.pin)


if __name__ == "__main__":
    sys.exit(main())
