"""Every merge method, one file per family, side by side (notation: θ₀ base, θᵢ experts, τᵢ = θᵢ − θ₀,
wᵢ coefficients). Importing this package registers them all in :mod:`fusionkit.merging.registry`.

* :mod:`.averaging` - weighted average / uniform soup; task arithmetic
* :mod:`.sparsify`  - TIES (trim, elect, disjoint mean); DARE (drop and rescale, then task arithmetic or TIES)
* :mod:`.pruning`   - Model Breadcrumbs (± TIES), DELLA (± linear), SCE, MagMax: task vectors pruned per entry
* :mod:`.slerp`     - spherical interpolation of two models
* :mod:`.geometric` - Model Stock, the Karcher mean, Multi-SLERP, NearSwap: merges chosen by the weights' geometry
* :mod:`.svd`       - TSV-M, ISO-C, ISO-CTS: task matrices merged through their singular value decompositions
* :mod:`.masks`     - EMR-merging, TALL masks (one light model per task), consensus merging
* :mod:`.fisher`    - Fisher-weighted averaging (diagonal Fisher statistics)
* :mod:`.regmean`   - RegMean's closed form per linear layer (input Gram statistics); RegMean++ (zoo level:
  each block's statistics measured through the merged blocks below it)
* :mod:`.soups`     - greedy soup (zoo level: scores its soups on dev data)
* :mod:`.adamerging` - AdaMerging (zoo level: task arithmetic's λ learned by entropy minimisation on dev text)
"""
# Each import registers its family's methods; this order is the order every listing shows.
from . import averaging  # noqa: F401,I001
from . import sparsify  # noqa: F401
from . import pruning  # noqa: F401
from . import slerp  # noqa: F401
from . import geometric  # noqa: F401
from . import svd  # noqa: F401
from . import masks  # noqa: F401
from . import fisher  # noqa: F401
from . import regmean  # noqa: F401
from . import soups  # noqa: F401
from . import adamerging  # noqa: F401
