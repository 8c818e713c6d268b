"""Developer tooling: demo-model builder, server launcher, benchmarks against peers.

Lives beside the runtime package, never inside it: the image does not install it and the server
never imports it. scripts/setup puts this folder on the dev venv's path (a .pth file).
"""
