"""GPU catalog: memory, memory bandwidth, compute capability, low-precision support, typical price.

Memory is the total that CUDA reports (``torch.cuda.mem_get_info()[1]``), which is what vLLM multiplies by
``--gpu-memory-utilization`` (``MemorySnapshot.total_memory`` in its GPU worker). It is less than
``nvidia-smi``'s ``memory.total`` (the driver keeps part of the card): an H100 80GB reports 81,559 MiB to
nvidia-smi but 79.19 GiB to CUDA. The GiB figures are the ones vLLM prints at start-up ("Free memory on
device (free/total GiB)"): 79.19 (H100 80GB), 139.81 (H200), 178.35 (B200) in its logs; 93.10 (H100 NVL),
79.15 (A100 80GB), 39.39 (A100 40GB), 44.39 (L40S), 94.97 (RTX PRO 6000), 23.64 (RTX 4090) and 31.36
(RTX 5090) as PyTorch and vLLM report them for those cards; the H100 PCIe is taken to match the SXM part.
They vary by a few hundredths with the driver.

Bandwidth is the HBM/GDDR peak in TB/s (10^12 bytes/s). Prices are typical US on-demand cloud rates per
GPU-hour (rounded; the seed guides quote $2.54/h for an H100 SXM5 and $3.96/h for an H200 SXM5): override
them with ``--price-per-gpu-hour``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GIB = 1 << 30


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    memory_mib: int  # nvidia-smi's memory.total (what detection reads), not what vLLM sizes by
    cuda_total_gib: float  # torch.cuda.mem_get_info()[1]: what vLLM multiplies by --gpu-memory-utilization
    bandwidth_tbs: float
    compute_capability: tuple[int, int]
    price_per_hour: float

    @property
    def memory_bytes(self) -> int:
        """The total vLLM sizes by: CUDA's, in bytes."""
        return int(self.cuda_total_gib * GIB)

    @property
    def fp8(self) -> bool:
        """FP8 tensor cores (Ada 8.9, Hopper 9.0, Blackwell); Ampere runs FP8 weights as W8A16 Marlin."""
        return self.compute_capability >= (8, 9)

    @property
    def fp4(self) -> bool:
        """FP4 (NVFP4) tensor cores: Blackwell only; older GPUs run NVFP4 weights as W4A16 Marlin."""
        return self.compute_capability >= (10, 0)

    @property
    def hopper(self) -> bool:
        return self.compute_capability[0] == 9

    @property
    def vllm_default_max_num_seqs(self) -> int:
        """vLLM's ``--max-num-seqs`` for ``vllm serve`` when none is given (``EngineArgs.get_batch_defaults``):
        1024 on GPUs of 70 GiB and more that are not A100s, 256 on the others."""
        return 1024 if self.cuda_total_gib >= 70 and "A100" not in self.name else 256


CATALOG: dict[str, GPU] = {g.key: g for g in (
    GPU("h100", "NVIDIA H100 SXM5 80GB", 81559, 79.19, 3.35, (9, 0), 2.54),
    GPU("h100-pcie", "NVIDIA H100 PCIe 80GB", 81559, 79.19, 2.0, (9, 0), 2.20),
    GPU("h100-nvl", "NVIDIA H100 NVL 94GB", 95830, 93.10, 3.9, (9, 0), 2.80),
    GPU("h200", "NVIDIA H200 SXM5 141GB", 143771, 139.81, 4.8, (9, 0), 3.96),
    GPU("b200", "NVIDIA B200 180GB", 183359, 178.35, 8.0, (10, 0), 6.25),
    GPU("a100-80g", "NVIDIA A100 SXM4 80GB", 81920, 79.15, 2.039, (8, 0), 1.79),
    GPU("a100-40g", "NVIDIA A100 SXM4 40GB", 40960, 39.39, 1.555, (8, 0), 1.29),
    GPU("l40s", "NVIDIA L40S 48GB", 46068, 44.39, 0.864, (8, 9), 1.03),
    GPU("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell 96GB", 97887, 94.97, 1.792, (12, 0), 1.89),
    GPU("rtx-4090", "NVIDIA GeForce RTX 4090 24GB", 24564, 23.64, 1.008, (8, 9), 0.44),
    GPU("rtx-5090", "NVIDIA GeForce RTX 5090 32GB", 32607, 31.36, 1.792, (12, 0), 0.79),
)}

_ALIASES = {"h100-sxm": "h100", "h100-80g": "h100", "h100-sxm5": "h100", "h200-sxm": "h200", "h200-sxm5": "h200",
            "a100": "a100-80g", "a100-80gb": "a100-80g", "a100-40gb": "a100-40g", "4090": "rtx-4090",
            "5090": "rtx-5090", "rtx-6000-pro": "rtx-pro-6000"}


def find_gpu(key: str) -> GPU:
    """A catalog entry by key or alias; ``ValueError`` (one line, listing the keys) when unknown."""
    k = key.strip().lower().replace("_", "-").replace(" ", "-")
    k = _ALIASES.get(k, k)
    if k not in CATALOG:
        raise ValueError(f"unknown GPU '{key}'; known: {', '.join(CATALOG)}")
    return CATALOG[k]


def gpu_from_nvidia_name(name: str, memory_mib: Optional[int] = None) -> Optional[GPU]:
    """Map an ``nvidia-smi`` product name (and its memory, which tells the A100 40/80GB apart) to an entry.

    None when the card is not in the catalog: the caller then asks the user to name one.
    """
    n = name.upper()
    if "A100" in n:
        big = ("80GB" in n or "80G" in n) or (memory_mib is not None and memory_mib > 60000)
        return CATALOG["a100-80g" if big else "a100-40g"]
    for needle, key in (("B200", "b200"), ("H200", "h200"), ("H100 NVL", "h100-nvl"), ("H100 PCIE", "h100-pcie"),
                        ("H100", "h100"), ("L40S", "l40s"), ("RTX PRO 6000", "rtx-pro-6000"), ("4090", "rtx-4090"),
                        ("5090", "rtx-5090")):
        if needle in n:
            return CATALOG[key]
    return None
