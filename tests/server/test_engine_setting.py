"""``--engine``: a setting with its variable, reaching every model, reported in /info and /metrics."""

from __future__ import annotations

import pytest

from distilserve.server.settings import ServerSettings
from tests.server.conftest import metric, running_app


def test_engine_setting_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().engine == "onnxruntime"
    monkeypatch.setenv("DISTILSERVE_ENGINE", "auto")
    assert ServerSettings().engine == "auto"
    with pytest.raises(ValueError, match="engine"):
        ServerSettings(engine="tensorrt")  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["auto", "onnxruntime"])
async def test_info_and_metrics_name_each_models_engine(model_args: list[str], engine: str) -> None:
    async with running_app(model_args, engine=engine) as (app, client):
        info = (await client.get("/info")).json()
        for model in info["models"]:
            # The tiny fp32 bundles have no OpenVINO form: auto keeps ONNX Runtime, and says why.
            assert model["engine"]["engine"] == "onnxruntime"
            assert model["engine"]["requested"] == engine
            assert model["engine"]["precision"] == "fp32"
            assert model["engine"]["reason"]
            labels = {"model": model["name"], "task": model["task"], "quantization": "none"}
            assert metric(app, "distilserve_model_info", **labels, engine="onnxruntime") == 1
