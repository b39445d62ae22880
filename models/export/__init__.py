"""Export a Hugging Face checkpoint to a verified distilserve bundle (``distilserve export``).

Importing this package is cheap: torch, transformers and optimum are imported inside the
functions that run an export, so ``models`` stays importable with the runtime install alone.

    from distilserve.models.export import ExportOptions, export_bundle
    manifest = export_bundle(ExportOptions(source="path/to/checkpoint", output=Path("bundles/m")))
"""

from distilserve.models.export.exporter import ExportOptions, export_bundle, summary_lines
from distilserve.models.export.isa import QuantScheme, detect_isa, resolve_scheme
from distilserve.models.export.parity import Thresholds
from distilserve.models.export.source import infer_task

__all__ = [
    "ExportOptions",
    "QuantScheme",
    "Thresholds",
    "detect_isa",
    "export_bundle",
    "infer_task",
    "resolve_scheme",
    "summary_lines",
]
