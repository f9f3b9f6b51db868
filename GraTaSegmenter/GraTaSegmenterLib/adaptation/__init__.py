"""Test-time adaptation: GraTa and the baselines it is compared with."""

from .methods import (METHODS, BNAdapt, GraTa, Method, NoAdapt, StepRecord, Tent, make_method)

__all__ = ["GraTa", "Tent", "BNAdapt", "NoAdapt", "Method", "StepRecord", "METHODS", "make_method"]
