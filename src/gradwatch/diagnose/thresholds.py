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
# A layer's update ratio ‖Δw‖/‖w‖ below this fraction of the busiest layer's: it barely learns
# while others do (the "early layers barely change" sign of vanishing gradients).
STALLED = 5e-3
# Before any update: ‖g‖/‖w‖ below this fraction of the largest layer's.
STALLED_AT_INIT = 3e-3
# Recorded updates a layer needs before its update ratio is judged.
MIN_UPDATE_STEPS = 5
# Update/weight per step, median layer. Around 1e-3 is healthy (Karpathy's rule of thumb);
# 0.1 rewrites a tenth of the weights every step, 1 replaces them.
UNSTABLE_WARN, UNSTABLE_ERROR = 0.1, 1.0
# The first ten updates together moved the median layer by its own size: the run started unstable.
EARLY_STEPS, EARLY_REWRITE = 10, 1.0
# ‖g‖/‖w‖ fell 100x after steps that moved > 3% of the weights: a large step broke the layer.
COLLAPSE, COLLAPSE_AFTER = 1e2, 0.03

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
