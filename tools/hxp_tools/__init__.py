"""Developer tooling: demo-model builder, server launcher, benchmarks against peers.

Lives beside the runtime package, never inside it: the image does not install it and the server
never imports it. scripts/setup puts this folder on the dev venv's path (a .pth file).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tools/hxp_tools/__init__.py -> the checkout
