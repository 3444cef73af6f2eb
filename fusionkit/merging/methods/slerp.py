"""Spherical linear interpolation of two models, tensor by tensor."""
from __future__ import annotations

from ..ops import slerp as slerp_tensors
from ..registry import option, register


@register("slerp", "spherical interpolation of two models, per tensor", n_experts=2,
          reference="https://doi.org/10.1145/325165.325242",
          t=option("position along the arc: 0 = first model, 1 = second"))
def slerp(tensors, base, w, ctx, *, t=0.5):
    """Along the great circle (Shoemake 1985): Ω = arccos⟨θ̂_A, θ̂_B⟩,
    θ = sin((1−t)Ω)/sin Ω · θ_A + sin(tΩ)/sin Ω · θ_B; linear when the tensors are nearly colinear."""
    return slerp_tensors(tensors[0], tensors[1], t)
