"""Relevance propagation: LRP rules (Captum's classes), their assignment, the engine."""

from captum_fdcam.propagation.assignment import RuleAssignment, default_rules
from captum_fdcam.propagation.engine import Propagation, propagate
from captum_fdcam.propagation.modes import AttentionRule, ContextRule, NormRule, ProductRule
from captum_fdcam.propagation.rules import EngineRule, ZBoxRule, ZPlusRule, rule_relevance

__all__ = [
    "AttentionRule",
    "ContextRule",
    "EngineRule",
    "NormRule",
    "ProductRule",
    "Propagation",
    "RuleAssignment",
    "ZBoxRule",
    "ZPlusRule",
    "default_rules",
    "propagate",
    "rule_relevance",
]
