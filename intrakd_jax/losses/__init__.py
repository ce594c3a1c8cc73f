"""Losses: IntRA-KD, class-weighted cross entropy and baseline distillation terms."""

from intrakd_jax.losses.baselines import (
    attention_transfer_loss,
    channel_wise_distillation_loss,
    logit_kd_loss,
)
from intrakd_jax.losses.intra_kd import (
    affinity_graph,
    aoi_maps,
    intra_kd_loss,
    moment_pool,
    multi_tap_intra_kd_loss,
)
from intrakd_jax.losses.segmentation import weighted_cross_entropy, weighted_cross_entropy_sums

__all__ = [
    "affinity_graph",
    "aoi_maps",
    "attention_transfer_loss",
    "channel_wise_distillation_loss",
    "intra_kd_loss",
    "logit_kd_loss",
    "moment_pool",
    "multi_tap_intra_kd_loss",
    "weighted_cross_entropy",
    "weighted_cross_entropy_sums",
]
