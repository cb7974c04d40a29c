"""How images are prepared for a model: what the data layer's decoding and every model share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """How images are prepared for a model: square resize to ``image_size``, then normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]
