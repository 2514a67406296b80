"""Sanity check by cascading model parameter randomisation (Adebayo et al. 2018).

`sanity_check` randomises the model's parameterised layers from the output down, one stage at a
time and cumulatively, re-explains the same images and targets at every stage and compares each
map with the original one (Spearman rank correlation of the maps and of their absolute values,
SSIM); `write_sanity` writes the long-form table and the plot of correlation against layer.
"""

from xaibench.sanity.similarity import average_ranks, map_similarity, spearman, ssim
from xaibench.sanity.stages import Stage, randomisation_stages, randomise

__all__ = [
    "Stage",
    "average_ranks",
    "map_similarity",
    "randomisation_stages",
    "randomise",
    "spearman",
    "ssim",
]
