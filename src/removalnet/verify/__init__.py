"""Ownership verifiers (DNN fingerprinting defenses) and decision thresholds.

Importing this package registers every available verifier: DeepJudge ("deepjudge"), the alignment-aware
DeepJudge countermeasure ("deepjudge_aligned"), ZEST ("zest"), ModelDiff ("modeldiff", profiling inputs
searched per suspect as the official code does), its suspect-independent PGD-pair variant ("modeldiff_pgd"),
IPGuard ("ipguard") and sample correlation ("sac").
"""
import importlib as _importlib

from .base import (Fingerprint, FingerprintCache, Metric, Verifier, all_metrics, create_verifier, list_verifiers,
                   register_verifier, verifier_class)
from .thresholds import MIN_REFERENCES, RULES, Calibration, calibrate, calibrate_models, false_positive_rate, verdict

for _name in ("deepjudge", "deepjudge_aligned", "zest", "modeldiff", "modeldiff_pgd", "ipguard", "sac"):
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # that verifier's module is not part of this installation
        if _e.name != f"{__name__}.{_name}":
            raise
del _name

__all__ = ["Metric", "Fingerprint", "Verifier", "FingerprintCache", "register_verifier", "create_verifier",
           "list_verifiers", "verifier_class", "all_metrics", "calibrate", "calibrate_models", "verdict",
           "false_positive_rate", "Calibration", "RULES", "MIN_REFERENCES"]
