"""Optimizers for binarized networks: Bop, second-order Bop, and CaseOptimizer to pair Bop with Adam."""

from .bop import Bop, Bop2ndOrder, bop
from .case import CaseOptimizer

__all__ = ["Bop", "Bop2ndOrder", "CaseOptimizer", "bop"]
