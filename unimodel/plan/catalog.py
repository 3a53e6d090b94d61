"""GPU catalog: memory, memory bandwidth, low-precision support and a typical on-demand price.

Prices are typical US on-demand cloud rates per GPU-hour (late 2026, rounded; the seed guides quote
$2.54/h for an H100 SXM5 and $3.96/h for an H200 SXM5): override with ``--price-per-gpu-hour``.
Memory is what the board reports (GB = 10^9 bytes); bandwidth is the HBM/GDDR peak in TB/s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    memory_gb: float
    bandwidth_tbs: float
    fp8: bool
    fp4: bool
    price_per_hour: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1e9)


CATALOG: dict[str, GPU] = {g.key: g for g in (
    GPU("h100", "NVIDIA H100 SXM5 80GB", 80.0, 3.35, True, False, 2.54),
    GPU("h100-pcie", "NVIDIA H100 PCIe 80GB", 80.0, 2.0, True, False, 2.20),
    GPU("h200", "NVIDIA H200 SXM5 141GB", 141.0, 4.8, True, False, 3.96),
    GPU("b200", "NVIDIA B200 180GB", 180.0, 8.0, True, True, 6.25),
    GPU("a100-80g", "NVIDIA A100 SXM4 80GB", 80.0, 2.04, False, False, 1.79),
    GPU("a100-40g", "NVIDIA A100 SXM4 40GB", 40.0, 1.56, False, False, 1.29),
    GPU("l40s", "NVIDIA L40S 48GB", 48.0, 0.864, True, False, 1.03),
    GPU("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell 96GB", 96.0, 1.79, True, True, 1.89),
    GPU("rtx-4090", "NVIDIA GeForce RTX 4090 24GB", 24.0, 1.008, True, False, 0.44),
    GPU("rtx-5090", "NVIDIA GeForce RTX 5090 32GB", 32.0, 1.79, True, True, 0.79),
)}

_ALIASES = {"h100-sxm": "h100", "h100-80g": "h100", "h200-sxm": "h200", "a100": "a100-80g", "4090": "rtx-4090",
            "5090": "rtx-5090", "l40": "l40s"}


def find_gpu(key: str) -> GPU:
    k = key.strip().lower().replace("_", "-")
    k = _ALIASES.get(k, k)
    if k not in CATALOG:
        raise ValueError(f"unknown GPU '{key}'; known: {', '.join(CATALOG)}")
    return CATALOG[k]


def gpu_from_nvidia_name(name: str) -> GPU | None:
    """Map an ``nvidia-smi`` product name to a catalog entry (None when not in the catalog)."""
    n = name.upper()
    for needle, key in (("B200", "b200"), ("H200", "h200"), ("H100 PCIE", "h100-pcie"), ("H100", "h100"),
                        ("A100", "a100-80g" if "80GB" in n or "80G" in n else "a100-40g"), ("L40S", "l40s"),
                        ("RTX PRO 6000", "rtx-pro-6000"), ("4090", "rtx-4090"), ("5090", "rtx-5090")):
        if needle in n:
            return CATALOG[key]
    return None
