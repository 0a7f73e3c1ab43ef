"""Layer-wise LoRA training: quality-weighted regression with fused Numba forward/backward kernels.

The problem (DESIGN.md section 2). For each target (layer, module) with inputs `X [n, in]`,
residual targets `R [n, out]` and the adapter `delta = s * B @ A` (`A [r, in]`, `B [out, r]`):

    L_m   = sum_i q_i * ||s B A x_i - r_i||^2 / (sum_i q_i * out_m)     (per output element)
    L     = mean over the M modules of L_m                              (widths weigh equally)

over the examples with `q_i >= quality_threshold`. `L` is what is minimised (its gradient, plus the
EWC penalty's) and every reported train/val loss is `L` (`evaluate`). Validation uses every
validation row, weighted by its quality, so it is comparable with the synthetic noise floor.

One optimisation step (the whole inner loop over an epoch's minibatches runs inside Numba,
`steps.run_steps`, without returning to Python):

1. `gradients.grad_by_module` or `grad_by_rows` (one fused kernel for every module) computes `h = A x`, `B^T r`, the loss, and the
   gradients of `L` w.r.t. A and B into preallocated buffers. It uses
   `||s B h - r||^2 = s^2 h^T (B^T B) h - 2 s h.(B^T r) + ||r||^2`, so it never forms the
   `[batch, out]` residual: four thin products (X A^T, R B, R^T (w H), G_h^T X) instead of five,
   each over four examples x two to four rank rows per inner loop. Work is split by module when
   the modules divide evenly over the threads (q/k/v/o on 2 threads: one fork-join per step, no
   partial sums), else by rows (per-thread partials, then a parallel reduction); `run_steps` calls
   the one the workspace chose, and only that one is compiled. It returns the
   squared norm of the full gradient (data + EWC penalty);
2. global gradient-norm clipping over all modules, like `torch.nn.utils.clip_grad_norm_`
   (`coef = min(1, max_norm / (norm + 1e-6))`);
3. the optimiser step (`optimizer.update_range`, fused per parameter block): online Fisher update, EWC
   penalty gradient, the clip, then AdamW (decoupled decay) / Adam (L2 in the gradient) / SGD
   (optional momentum), with LoRA+ (`lr_B = lr * loraplus_ratio`). Without clipping and with the
   by-module split, each thread applies it to its own modules inside `grad_by_module`.

EWC++: the penalty `lambda/2 * sum F* (w - w*)^2` uses the anchor weights `w*` and Fisher `F*`
given in `EwcState` (fixed during the run). The online Fisher `F <- d F + (1 - d) g^2` is estimated
from the squared minibatch gradients of `L` (before clipping, without the penalty); it starts
from `F*` when given (so older tasks fade with `d^steps`) and is bias-corrected like Adam's second
moment when started from zero. It is returned for the next run.

Mixed precision: inputs/targets may be stored as float16 (half the memory of the dataset). Each
minibatch is gathered and converted inside the step loop (each validation chunk in numpy) into
preallocated float32 buffers, and the kernels read float32 only; master weights, optimiser state, gradients and every
accumulation are float32 (losses float64). With float32 storage the kernels read the rows in place.

Gradient checkpointing is deliberately absent: training is layer-wise, each module's problem is
one linear map of stored inputs, so there are no activations between layers to drop and recompute.

Determinism: shuffles (own splitmix64 Fisher-Yates) and every reduction order are fixed by the
seed and the thread count (per-thread partial sums are combined in thread order), so a run is
bit-identical for a seed at a given NUMBA_NUM_THREADS; other thread counts agree to rounding.

Threads: the kernels are fork-join over NUMBA_NUM_THREADS. On cores shared with other busy
processes every fork-join waits for a descheduled thread; `TrainSettings.num_threads` (or
NUMBA_NUM_THREADS=1) avoids that when several trainings share a machine.

One job per file:

    settings     TrainSettings and its validation
    results      ModuleProblem, EwcState, TrainResult
    problems     build_problems, the input checks, storage dtypes
    micro        the unrolled dot/axpy micro-kernels
    gradients    the fused gradient kernels, one per schedule (grad_by_module, grad_by_rows)
    optimizer    the fused optimiser step (update_range, update)
    steps        the step loop (run_steps), shuffling, the float16 gather
    evaluation   losses of given weights, the zero baseline, module_gradients
    workspace    the buffers and the named bundles the kernels take
    loop         train: epochs, evaluations, early stopping, the best checkpoint
"""

from ruv_kernels.train.evaluation import evaluate, evaluate_modules, module_gradients, zero_adapter_loss
from ruv_kernels.train.loop import train
from ruv_kernels.train.problems import build_problems
from ruv_kernels.train.results import EwcState, ModuleProblem, TrainResult
from ruv_kernels.train.settings import OPT_CODE, OPTIMIZERS, TrainSettings

__all__ = ["EwcState", "ModuleProblem", "OPTIMIZERS", "OPT_CODE", "TrainResult", "TrainSettings", "build_problems",
           "evaluate", "evaluate_modules", "module_gradients", "train", "zero_adapter_loss"]
