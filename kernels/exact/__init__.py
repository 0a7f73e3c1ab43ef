"""The exact solver: sufficient statistics, the closed-form rank-r optimum, its certificate.

Per module the training objective is weighted least squares, so its rank-r global optimum has a
closed form (reduced-rank ridge regression). One file per job:

    gather       Numba kernels: rows into chunk buffers weighted by sqrt(q), float16 via a table
    accumulate   G += X^T Q X, C += X^T Q R in one pass over X (chunks + BLAS syrk/gemm; float64
                 products, or float32 products summed in float64 across chunks)
    stats        ModuleStats (G, C, rr, q_sum, n) and LayerStats (one Gram per shared input)
    solve        solve_reduced_rank -> ExactSolution (balanced PEFT factors A [r, in], B [out, r])
    packing      pack_stats / unpack_stats: flat named arrays, each shared Gram stored once
    loss         loss_from_stats / loss_from_factors: any delta's loss from the statistics alone
    consolidate  consolidated_stats / consolidate_adapter / consolidation_sweep: exact consolidation
                 against an old task's Gram, and its trade-off curve
    grouped      solve_grouped_reduced_rank: the rank-r fit when row groups read different inputs
                 (v_proj through attention: one Gram per key/value group), by ALS
    dropout      dropout_ridge: input dropout's expected-value equivalent, a diagonal ridge
    adapter      solve_adapter: every module, one factorisation per shared Gram, dropout, selection
    dataset      dataset_stats: every module of a dataset, one pass per input, splits as weights
    certificate  certificate: any adapter's loss against the rank-r optimum, module by module
    errors       ExactSolveError: one line naming the module and the reason
"""

from ruv_kernels.exact.accumulate import accumulate_cross, accumulate_gram, resolve_precision, stream_stats
from ruv_kernels.exact.adapter import DEFAULT_RIDGE_REL, solve_adapter
from ruv_kernels.exact.certificate import Certificate, ModuleCertificate, certificate
from ruv_kernels.exact.consolidate import (ConsolidatedStats, consolidate_adapter, consolidated_stats,
                                       consolidation_offset, consolidation_sweep)
from ruv_kernels.exact.dataset import dataset_rows, dataset_stats, split_weights
from ruv_kernels.exact.dropout import dropout_ridge
from ruv_kernels.exact.errors import ExactSolveError
from ruv_kernels.exact.grouped import GroupedSolution, solve_grouped_reduced_rank
from ruv_kernels.exact.packing import pack_stats, unpack_stats
from ruv_kernels.exact.loss import loss_from_factors, loss_from_rows, loss_from_stats
from ruv_kernels.exact.solve import ExactSolution, RidgeFactor, ValidationData, ridge_factor, solve_reduced_rank
from ruv_kernels.exact.stats import LayerStats, ModuleStats

__all__ = [
    "ModuleStats", "LayerStats", "accumulate_gram", "accumulate_cross", "stream_stats", "resolve_precision",
    "solve_reduced_rank", "ridge_factor", "RidgeFactor", "ExactSolution",
    "loss_from_stats", "loss_from_factors", "loss_from_rows", "consolidated_stats", "consolidation_offset", "consolidate_adapter", "consolidation_sweep",
    "ConsolidatedStats", "dropout_ridge", "ExactSolveError", "certificate", "Certificate", "ModuleCertificate",
    "dataset_stats", "dataset_rows", "split_weights", "ValidationData", "solve_adapter", "DEFAULT_RIDGE_REL",
    "pack_stats", "unpack_stats", "solve_grouped_reduced_rank", "GroupedSolution",
]
