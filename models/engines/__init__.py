"""The engines a bundle runs on: ONNX Runtime (always) and OpenVINO (the ``[openvino]`` extra).

``base.Engine`` is the one interface ``ModelRuntime`` calls (run a padded batch, describe
itself); ``select.choose_engine`` times the engines a bundle can use on this CPU and keeps the
fastest that agrees with ONNX Runtime. OpenVINO is imported only when its engine is built.
"""

from distilserve.models.engines.base import ENGINE_CHOICES, Engine, EngineChoice, EngineName

__all__ = ["ENGINE_CHOICES", "Engine", "EngineChoice", "EngineName"]
