"""The paper's studies as kinds of experiment spec (``study: {name: ..., ...}`` in a spec):

=================  ==========================================================================
substitute_size    RemovalNet against the substitute-set size, S_LTD and S_LSD (Fig. 6)
efficiency         KnockoffNets' learning curve against RemovalNet's fidelity and cost (Fig. 7)
ablation           metrics against alpha (beta = 0) and beta (Fig. 8)
saliency           LayerCAM maps of a hidden layer: victim, surrogate, negative (Fig. 9)
boundary           t-SNE of output probabilities at t = 0, 100, 1000 (Fig. 10)
robustness         Rob and RobD under FGSM, PGD, DeepFool (Table 4)
=================  ==========================================================================

``removalnet study NAME [SPEC.yaml]`` runs one (bundled small configs: ``removalnet/configs/studies``) and
writes its report; from Python, :func:`build_study_report` returns a run's study section as data and
:func:`removalnet.report.write_sections` / :func:`removalnet.report.render` render it.
"""
from __future__ import annotations

from .base import (Study, StudyReport, SurrogateStudy, create_study, list_studies, register_study,
                   study_class)
from ..registry import import_modules
from .report import build_study_report

# The study modules; each registers its study on import (a new study: one file and one name here).
MODULES = ("substitute_size", "efficiency", "ablation", "saliency", "boundary", "robustness")
import_modules(__name__, MODULES)

__all__ = ["Study", "StudyReport", "SurrogateStudy", "create_study", "list_studies", "register_study",
           "study_class", "build_study_report", "MODULES"]
