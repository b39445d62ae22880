"""The bench drives real servers: it borrows the server tests' fixtures (a live uvicorn over the
tiny bundles, and an environment without the machine's DISTILSERVE_* variables)."""

from tests.server.conftest import _isolated_env, live_server, model_args

__all__ = ["_isolated_env", "live_server", "model_args"]
