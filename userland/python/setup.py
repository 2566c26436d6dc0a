"""Builds the package: generates the stubs from ../../proto first (see generate.py), then lets
setuptools find every package, the generated ones included. Metadata is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import find_packages, setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate  # noqa: E402

if (generate.DEFAULT_PROTO_DIR / "p2pos").is_dir():
    generate.generate()
elif not (Path(__file__).resolve().parent / "p2pos" / "app").is_dir():
    raise SystemExit(f"error: no proto/ directory at {generate.DEFAULT_PROTO_DIR} to generate from")

setup(packages=find_packages(include=["p2pos", "p2pos.*"]))
