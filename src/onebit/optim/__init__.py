"""Optimizers for binarized networks: Bop, second-order Bop, and CaseOptimizer to pair Bop with Adam.

As in ``torch.optim``, ``onebit.optim.bop`` is the module of ``Bop``; its functional form is
``onebit.optim.bop.bop``.
"""

from . import bop
from .bop import Bop, Bop2ndOrder
from .case import CaseOptimizer

__all__ = ["Bop", "Bop2ndOrder", "CaseOptimizer", "bop"]
