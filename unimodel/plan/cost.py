"""What a plan costs: GPUs × price per GPU-hour, by the hour and by the month (730 hours)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from unimodel.plan.catalog import GPU

HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Cost:
    gpus: int
    price_per_gpu_hour: float

    @property
    def hourly_usd(self) -> float:
        return self.gpus * self.price_per_gpu_hour

    @property
    def monthly_usd(self) -> float:
        return self.hourly_usd * HOURS_PER_MONTH


def cost_of(gpu: GPU, gpus: int, price_per_gpu_hour: Optional[float] = None) -> Cost:
    """The catalog's typical on-demand price unless one is given."""
    return Cost(gpus, gpu.price_per_hour if price_per_gpu_hour is None else price_per_gpu_hour)
