"""Pruning: scores -> bool masks (True = kept), and their application."""

from lscjax._src.prune.magnitude import apply as apply
from lscjax._src.prune.magnitude import count_params as count_params
from lscjax._src.prune.magnitude import magnitude as magnitude
from lscjax._src.prune.magnitude import sparsity as sparsity
from lscjax._src.prune.magnitude import std_threshold as std_threshold

__all__ = ["apply", "count_params", "magnitude", "sparsity", "std_threshold"]
from lscjax._src.flax.activations import LayerActivations as LayerActivations
from lscjax._src.flax.activations import collect_activations as collect_activations
from lscjax._src.prune.admm import project_topk as project_topk
from lscjax._src.prune.apoz import apoz as apoz
from lscjax._src.prune.apoz import apoz_scores as apoz_scores
from lscjax._src.prune.block import block_magnitude as block_magnitude
from lscjax._src.prune.block import block_scores as block_scores
from lscjax._src.prune.block import n_of_m as n_of_m
from lscjax._src.prune.channel_lasso import channel_lasso as channel_lasso
from lscjax._src.prune.channels import ChannelSelection as ChannelSelection
from lscjax._src.prune.channels import input_groups as input_groups
from lscjax._src.prune.channels import weight_masks as weight_masks
from lscjax._src.prune.distributions import distributed_magnitude as distributed_magnitude
from lscjax._src.prune.distributions import erk_sparsities as erk_sparsities
from lscjax._src.prune.distributions import layer_sparsities as layer_sparsities
from lscjax._src.prune.hessian import LayerStats as LayerStats
from lscjax._src.prune.l1_filters import filter_norms as filter_norms
from lscjax._src.prune.l1_filters import l1_filters as l1_filters
from lscjax._src.prune.refit import refit as refit
from lscjax._src.prune.sensitivity import sensitivity as sensitivity
from lscjax._src.prune.sensitivity import sensitivity_table as sensitivity_table
from lscjax._src.prune.sparsegpt import sparsegpt as sparsegpt
from lscjax._src.prune.target import dense_target as dense_target
from lscjax._src.prune.thin import Thinned as Thinned
from lscjax._src.prune.thin import thin as thin
from lscjax._src.prune.thinet import thinet as thinet
from lscjax._src.prune.wanda import wanda as wanda

__all__ += [
    "ChannelSelection",
    "LayerActivations",
    "LayerStats",
    "Thinned",
    "apoz",
    "apoz_scores",
    "block_magnitude",
    "block_scores",
    "channel_lasso",
    "collect_activations",
    "dense_target",
    "distributed_magnitude",
    "erk_sparsities",
    "filter_norms",
    "input_groups",
    "l1_filters",
    "layer_sparsities",
    "n_of_m",
    "project_topk",
    "refit",
    "sensitivity",
    "sensitivity_table",
    "sparsegpt",
    "thin",
    "thinet",
    "wanda",
    "weight_masks",
]
