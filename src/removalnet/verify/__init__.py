"""Ownership verifiers (DNN fingerprinting defenses) and decision thresholds.

Importing this package registers every available verifier: DeepJudge ("deepjudge"), the alignment-aware
DeepJudge countermeasure ("deepjudge_aligned") and its scale-invariant variant ("deepjudge_scaled"), ZEST
("zest"), ModelDiff ("modeldiff", profiling inputs searched per suspect as the official code does), its
suspect-independent PGD-pair variant ("modeldiff_pgd"), IPGuard ("ipguard") and sample correlation ("sac").
"""
from ..registry import import_modules
from .base import (Fingerprint, FingerprintCache, Metric, Verifier, all_metrics, create_verifier, list_verifiers,
                   register_verifier, verifier_class, verifier_defaults)
from .thresholds import (MIN_REFERENCES, RULES, Calibration, ThresholdRule, calibrate, calibrate_models,
                         false_positive_rate, score_model, verdict)

# The verifier modules; each registers its verifier on import (a new verifier: one file and one name here).
# An import error in any of them is raised.
MODULES = ("deepjudge", "deepjudge_aligned", "deepjudge_scaled", "zest", "modeldiff", "modeldiff_pgd", "ipguard", "sac")
import_modules(__name__, MODULES)

__all__ = ["Metric", "Fingerprint", "Verifier", "FingerprintCache", "register_verifier", "create_verifier",
           "list_verifiers", "verifier_class", "verifier_defaults", "all_metrics", "calibrate", "calibrate_models", "verdict",
           "false_positive_rate", "Calibration", "RULES", "MIN_REFERENCES", "ThresholdRule", "score_model"]
