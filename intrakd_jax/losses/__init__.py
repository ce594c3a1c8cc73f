"""Losses: IntRA-KD, class-weighted cross entropy and baseline distillation terms.

``terms`` composes them into the weighted distillation objective of the train step.
"""

from intrakd_jax.losses.baselines import (
    attention_map,
    attention_transfer_loss,
    channel_wise_distillation_loss,
    logit_kd_loss,
    masked_pixel_mean,
)
from intrakd_jax.losses.intra_kd import (
    affinity_graph,
    aoi_maps,
    intra_kd_loss,
    moment_pool,
    multi_tap_intra_kd_loss,
)
from intrakd_jax.losses.sad import sad_loss
from intrakd_jax.losses.segmentation import weighted_cross_entropy, weighted_cross_entropy_sums
from intrakd_jax.losses.skd import skd_pair_loss, skd_pixel_loss

__all__ = [
    "affinity_graph",
    "aoi_maps",
    "attention_map",
    "attention_transfer_loss",
    "channel_wise_distillation_loss",
    "intra_kd_loss",
    "logit_kd_loss",
    "masked_pixel_mean",
    "moment_pool",
    "multi_tap_intra_kd_loss",
    "sad_loss",
    "skd_pair_loss",
    "skd_pixel_loss",
    "weighted_cross_entropy",
    "weighted_cross_entropy_sums",
]
