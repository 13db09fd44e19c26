"""The op layer: the contract, backend choice, the ``torch.library`` ops and the backends.

``contract`` (schemas, activation codes, mask layout, argument checks),
``backend`` (which implementation runs), ``ops`` (registration, fake
implementations, autograd), ``reference`` (plain PyTorch, the oracle),
``triton`` (Triton kernels), ``decompose`` (the aten form traced where no
running statistic is written), ``vmap`` (batching rules); the compiled kernels
are ``bnfused._C``.
"""

from . import (
    contract,
    ops,
    reference,
    vmap,  # noqa: F401  (registers the ops' batching rules)
)
from .backend import backends, use_backend, use_cuda_path

__all__ = ["backends", "contract", "ops", "reference", "use_backend", "use_cuda_path"]
