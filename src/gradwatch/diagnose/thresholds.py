"""Every threshold the detectors use, with its unit and its reason, in one place a user can read
(and argue with): the detector modules import them from here.

Sources: the ratio rules of AUTOTRAINER (Zhang et al., ICSE 2021: vanishing when the first/last
gradient ratio is below 1e-3 and the first below 1e-4, exploding above 70, dying ReLU at ≥ 70%
zero gradients, saturation at > 50% of |pre-activation| ≥ 5) are the baseline these were set
against on the labelled scenario suite (tests/scenarios, bench/diagnosis.py); where a number below
differs, its comment says why.
"""

from __future__ import annotations

# ---------------------------------------------------------------- layer by layer (layerwise.py)

# Fraction of a saturating activation's units in their flat tails (|φ'| < 5% of its peak).
# Half is AUTOTRAINER's line; at 90% almost no gradient passes the layer.
SATURATED_WARN, SATURATED_ERROR = 0.5, 0.9
# Fraction of a rectifier's units that are flat for every sample of the batch.
# AUTOTRAINER flags 70%; half already costs a layer half its width, 90% leaves it nearly dead.
DEAD_WARN, DEAD_ERROR = 0.5, 0.9
# Before any update (gw.check) a zero-mean pre-activation is off for half the inputs, and for all
# rows of a batch whose rows are alike (graph nodes, one sequence) with that same chance of 1/2:
# only a share well above a half is evidence at init.
DEAD_AT_INIT = 0.75
# A layer's update ratio ‖Δw‖/‖w‖ below this fraction of the busiest layer's: it barely learns
# while others do (the "early layers barely change" sign of vanishing gradients).
STALLED = 5e-3
# Before any update: ‖g‖/‖w‖ below this fraction of the largest layer's.
STALLED_AT_INIT = 3e-3
# ... unless the back-propagated signal reaches a layer before it at this fraction of the median
# layer's or more: then the gradient got below it and its small gradient is its own (BERT's
# query/key projections at near-uniform attention), not a signal vanishing with depth.
BRANCH_REACHED = 0.1
# Recorded updates a layer needs before its update ratio is judged.
MIN_UPDATE_STEPS = 5
# Update/weight per step, median layer. Around 1e-3 is healthy (Karpathy's rule of thumb);
# 0.1 rewrites a tenth of the weights every step, 1 replaces them.
UNSTABLE_WARN, UNSTABLE_ERROR = 0.1, 1.0
# The first ten updates together moved the median layer by its own size: the run started unstable.
EARLY_STEPS, EARLY_REWRITE = 10, 1.0
# ‖g‖/‖w‖ fell 100x after steps that moved > 3% of the weights: a large step broke the layer.
COLLAPSE, COLLAPSE_AFTER = 1e2, 0.03

# Median ‖g‖/‖w‖ at step 0, before any update, with an optimizer whose step follows the
# gradient's size (SGD): above 1 a step of lr 1 replaces the weights. Healthy inits sit at 1e-3 to
# 1e-1; a gradient this large is the model's (its init, its loss, its data), so the large steps
# that follow are not the learning rate's doing alone and do not explain what they break
# (causes.py), and an explosion that follows started at step 0 (depth.py).
GRAD_AT_INIT = 1.0
# A run of fewer recorded steps than this (gw.check's rehearsal: 20 steps on one batch) is too
# short to expect the loss to halve, the long-run sign that a net fits its data: there the loss
# made progress when its last steps sit below LR_NO_PROGRESS (0.8) of its first, with nothing
# non-finite; the same line between a large workable step and one that is too large that the
# learning-rate detector draws (rate.py). Nielsen's network (N(0,1) weights, sigmoid, softmax +
# cross-entropy) at SGD lr 3 falls to 0.66x of its first loss (medians) in 20 rehearsed steps and
# halves later; it trains to 9% error on digits, as at lr 1 and better than at lr 0.3 (realbugs
# so48385830 fixed). The watched runs of the scenario suite (50 steps) are longer than this.
SHORT_RUN = 40
# A squared error whose first value's root exceeds this many times the largest target: the output
# starts out of the targets' scale, and the loss's gradient (which grows with the error) with it.
LOSS_OUT_OF_SCALE = 3.0

# ---------------------------------------------------------------- across depth (depth.py)

# A depth trend needs at least this many layers.
MIN_LAYERS = 4
# Total multiplier of the back-propagated signal from the last layer back to the first.
# AUTOTRAINER's 1e-3 warns; at 1e-6 the first layers learn a millionth as fast: an error.
VANISH_WARN, VANISH_ERROR = 1e-3, 1e-6
EXPLODE_WARN, EXPLODE_ERROR = 1e3, 1e6
# The first quarter against the last quarter of the layers must agree with the fit, 10x less
# strictly, so that one odd layer does not make a trend.
QUARTILE_MARGIN = 10.0
# ‖g‖/‖w‖, median over layers: at 10 an SGD step of lr 0.1 already rewrites the layer; healthy
# nets sit below 1.
RELATIVE_GRAD_WARN, RELATIVE_GRAD_ERROR = 1e1, 1e4
# A step's total gradient norm over the median of the steps before it: a spike.
SPIKE = 1e2

# ---------------------------------------------------------------- through time (temporal.py)

# ‖∂L/∂x_0‖ / ‖∂L/∂x_T‖ over a recurrent layer's sequence.
TIME_VANISH_WARN, TIME_VANISH_ERROR = 1e-4, 1e-8
# Growth is judged more strictly than decay: x100 over the sequence already makes gradient steps
# that overshoot (Pascanu et al. 2013), and healthy gated units never grow backwards at all.
TIME_EXPLODE_WARN, TIME_EXPLODE_ERROR = 1e2, 1e4
# Time steps a sequence needs before its trend is judged.
MIN_TIME_STEPS = 8
# Recorded steps a loss needs before it can be called a plateau: a short watched run (50 steps)
# must be able to show one.
PLATEAU_STEPS = 30
# A plateau: the loss ended less than 5% below where it started.
PLATEAU_GAIN = 0.05

# ---------------------------------------------------------------- progress (progress.py)

# The busiest layer's update/weight per step: healthy runs sit near 1e-3 and above.
IDLE = 3e-4
# ‖g‖/‖w‖, median layer: below it an idle run is starved of gradient, not of learning rate.
SMALL_GRADIENT = 1e-2

# ---------------------------------------------------------- the loop around the model (loop.py)

# Inputs (root-mean-square over the first batch autograd records): standardised data sits near 1,
# pixels in [0, 1] near 0.5. At 100 a default-init first layer's pre-activations are ~100x too
# large (tanh/sigmoid saturate, softmax becomes one-hot); at 1e4 raw counts or currencies.
UNSCALED_WARN, UNSCALED_ERROR = 1e2, 1e4
# Below this the inputs are a hundred-thousandth of unit scale (a unit mistake, e.g. /255 twice).
UNSCALED_TINY = 1e-3
# Regression targets (rms) this far from 1 make an MSE loss and its gradients 1e4x too large.
TARGET_UNSCALED = 1e2
# Optimizer steps checked for uncleared gradients before it is judged, and the share of them at
# which the parameter's .grad still held the previous step's gradient (any share is a bug; half
# allows for a loop that skips zero_grad once, e.g. on its first step).
UNCLEARED_MIN_STEPS, UNCLEARED_SHARE = 2, 0.5
# A log-likelihood of probabilities is >= 0: a logged loss below this means targets outside the
# output's range (labels 0, 1, 2 under a sigmoid and binary cross-entropy).
NEGATIVE_LIKELIHOOD = -1e-3

# ---------------------------------------------------------------- learning rate (rate.py)

# Update/weight per step, median layer, median over the first LR_EARLY steps: above 3e-2 a few
# steps rewrite the weights. With a loss that spikes above LR_SPIKE x its first value (or goes
# non-finite) the step is too large for the loss surface.
LR_EARLY, LR_HIGH_UPDATE, LR_SPIKE = 10, 3e-2, 1.1
# ... and the loss made no lasting progress: the mean of the last tenth of the logged losses is
# above this fraction of the first. A healthy large step spikes and recovers (pytorch/examples'
# time_sequence_prediction, realbugs fixed versions at their fixed rates: 0.5x to 1e-2x of the
# first loss at the end); a rate that is too high leaves the loss where it started or worse.
LR_NO_PROGRESS = 0.8
# The update/weight ratio a remedy aims for: between Karpathy's 1e-3 and the 1e-2 that Adam at its
# default 1e-3 gives a freshly initialised net.
LR_TARGET_UPDATE = 3e-3
# Too low: the median layer's updates stay below LR_LOW_UPDATE, the loss is still falling at the
# end as fast as on average (the last quarter's slope >= LR_STILL_FALLING x the run's) and it has
# not yet fallen by half.
LR_LOW_UPDATE, LR_STILL_FALLING, LR_LOW_GAIN = 3e-3, 0.5, 0.5
# Updates near 1e-3 are healthy by the same rule of thumb: a slow loss there may be a careful
# rate or a hard task, so "too low" is only said (info); below this (as IDLE) it is a warning.
LR_LOW_WARN = 3e-4
# ... or when the steps agree: over the run the weights' norm changed by at least this share of
# the path the updates walked (Σ‖Δw‖/‖w‖). Steps that cancel (SGD noise, a settled net) give a
# few percent; a net creeping down one slope at a rate too small for it gives more than half.
# Then more steps of the same size would only walk further the same way: the rate is too low.
LR_COHERENT = 0.5
# A raised rate is aimed to walk the weights this many times their own size over the same run
# (their own size by half-way, leaving the rest to converge), where that asks more than
# LR_TARGET_UPDATE does.
LR_TRAVEL = 2.0
LR_MIN_STEPS = 20

# ---------------------------------------------------------------- theory at init (phase.py)

# A traced chain (weight layers joined by one elementwise activation) must hold this share of the
# model's weight layers for the theory to speak for the model: below it residuals, norms or
# attention carry the gradient along paths mean-field theory does not describe.
THEORY_COVERAGE = 0.75
# The theory's per-layer factor and the measured one (geometric means over the chain) must agree
# within this factor: at width >= 100 they agree within a few percent (DOMAIN.md), so a larger gap
# means the model is not the stack the theory assumes.
THEORY_AGREE = 1.25
# Chaotic phase (χ₁ > 1): a gradient that grows tenfold from the last layer to the first. Growth
# there comes with a forward map that decorrelates nearby inputs (c* < 1), so it is judged more
# strictly than the measured EXPLODE_WARN (1e3), which must also tolerate healthy nets' spread.
# A chain deeper than the trainable depth 6ξ_c (Schoenholz et al. 2017) is an error.
THEORY_CHAOS_WARN = 10.0
