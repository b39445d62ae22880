"""Which int8 scheme suits the CPU that will serve the bundle.

ONNX Runtime's dynamic quantization always quantizes activations to uint8 at run time; what
can be chosen is the weight type and ``reduce_range``. The right choice depends on the
instruction set of the serving CPU (ONNX Runtime's quantization guide, "data type selection"):

* x86 with VNNI (``avx512_vnni``, or ``avx_vnni`` on client cores): u8 activations x s8 weights.
  VNNI multiplies u8 by s8 and accumulates in 32 bits, so this is the fastest kernel and it
  does not saturate; no reduced range is needed.
* x86 with AVX2 but no VNNI: u8 x s8 goes through ``vpmaddubsw``, whose 16-bit intermediate
  sums can saturate and cost accuracy. u8 x u8 takes a different kernel that cannot saturate,
  so that is the scheme used there (ORT's other remedy, ``reduce_range``, only exists for
  signed weights; with u8 weights it is unnecessary).
* arm64: u8 activations x s8 weights (the NEON/SDOT kernels' native form), no reduced range.

The export machine is often the serving machine, hence the ``auto`` default; pass the serving
CPU's ISA explicitly when exporting elsewhere.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Isa = Literal["avx512_vnni", "avx_vnni", "avx2", "arm64", "generic"]
IsaChoice = Literal["auto", "avx512_vnni", "avx_vnni", "avx2", "arm64", "generic"]
ISA_CHOICES: tuple[IsaChoice, ...] = ("auto", "avx512_vnni", "avx_vnni", "avx2", "arm64", "generic")
QuantTypeName = Literal["QInt8", "QUInt8"]
# What one int8 activation scale covers: one row (token) of the activation matrix, which keeps
# a row's result independent of its batch, or the whole batch (ONNX Runtime's dynamic
# quantization). models.export.quantize explains and measures both.
ActivationScales = Literal["per-row", "per-tensor"]
ACTIVATION_SCALES: tuple[ActivationScales, ...] = ("per-row", "per-tensor")

ARM_MACHINES = frozenset({"aarch64", "arm64", "armv8l", "armv8b"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


@dataclass(frozen=True, slots=True)
class QuantScheme:
    """The int8 settings for one ISA, in ``onnxruntime.quantization.QuantType`` names."""

    isa: Isa
    weight_type: QuantTypeName
    activation_type: QuantTypeName
    reduce_range: bool


SCHEMES: dict[Isa, QuantScheme] = {
    "avx512_vnni": QuantScheme(
        "avx512_vnni", weight_type="QInt8", activation_type="QUInt8", reduce_range=False
    ),
    "avx_vnni": QuantScheme("avx_vnni", weight_type="QInt8", activation_type="QUInt8", reduce_range=False),
    "avx2": QuantScheme("avx2", weight_type="QUInt8", activation_type="QUInt8", reduce_range=False),
    "arm64": QuantScheme("arm64", weight_type="QInt8", activation_type="QUInt8", reduce_range=False),
    # Unknown CPUs get the scheme that cannot saturate on any kernel.
    "generic": QuantScheme("generic", weight_type="QUInt8", activation_type="QUInt8", reduce_range=False),
}


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of ``/proc/cpuinfo`` text (x86 ``flags``, arm ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def detect_isa(cpuinfo: str | None = None, machine: str | None = None) -> Isa:
    """The ISA of this machine (or of the given ``/proc/cpuinfo`` text and ``uname -m``)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in ARM_MACHINES:
        return "arm64"
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo)
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx2" in flags:
        return "avx2"
    if machine not in X86_MACHINES:
        logger.warning("unknown CPU architecture %r: using the generic u8/u8 int8 scheme", machine)
    return "generic"


def resolve_scheme(choice: IsaChoice) -> QuantScheme:
    """The scheme for an explicit ISA, or for this machine's when ``choice == "auto"``."""
    isa: Isa = detect_isa() if choice == "auto" else choice
    return SCHEMES[isa]


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def isa_misfit(bundle_isa: str | None, bundle_weight_type: str | None, cpu_isa: Isa) -> str | None:
    """Why an int8 bundle's scheme does not suit a CPU of ``cpu_isa``, or None when it does.

    What matters is the weight type the kernels of this CPU want (``SCHEMES``): an avx512_vnni
    bundle suits an avx_vnni CPU (both u8 x s8), an avx2 bundle a generic one (both u8 x u8).
    """
    if bundle_weight_type is None:
        return None
    wanted = SCHEMES[cpu_isa].weight_type
    if bundle_weight_type == wanted:
        return None
    if bundle_weight_type == "QInt8":
        return (
            f"its u8 x s8 int8 (made for {bundle_isa}) runs on {cpu_isa} without VNNI through "
            "vpmaddubsw, whose 16-bit sums can saturate: answers may lose accuracy"
        )
    return (
        f"its u8 x u8 int8 (made for {bundle_isa}) cannot use the {cpu_isa} u8 x s8 kernels "
        "(VNNI, SDOT): it runs slower than a bundle made for this CPU"
    )


def log_isa_fit(
    bundle: Path,
    bundle_isa: str | None,
    bundle_weight_type: str | None,
    cpu_isa: Isa,
    *,
    source: str | None = None,
) -> str | None:
    """Warn, with the fix, when an int8 bundle was quantized for another kind of CPU than
    ``cpu_isa``, the serving one's. ``source`` is the checkpoint the bundle came from (its
    manifest's source id). Returns the reason, or None.
    """
    reason = isa_misfit(bundle_isa, bundle_weight_type, cpu_isa)
    if reason is not None:
        fix = f"distilserve export SOURCE --output {bundle} --overwrite --isa auto"
        logger.warning(
            "int8 scheme of %s does not suit this CPU: %s; re-export it on this machine: %s "
            "(SOURCE: the checkpoint it came from, %s)",
            bundle,
            reason,
            fix,
            source or "see its manifest",
            extra={
                "event": "isa_mismatch",
                "bundle": str(bundle),
                "bundle_isa": bundle_isa,
                "bundle_weight_type": bundle_weight_type,
                "cpu_isa": cpu_isa,
                "wanted_weight_type": SCHEMES[cpu_isa].weight_type,
                "fix": fix,
                "source": source,
            },
        )
    return reason
