"""Built-in velocity models and the adapter for plain tensor networks."""

from fmkit.models.adapter import TensorModel
from fmkit.models.mlp import MLP, SinusoidalTimeEmbedding

__all__ = ["MLP", "SinusoidalTimeEmbedding", "TensorModel"]
