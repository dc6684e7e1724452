"""Signal-propagation theory: how fast gradients vanish or explode in a deep network, before
training.

- `meanfield`: the mean-field recursions (q*, χ₁, depth scales, phase, critical σ_w²);
- `gaussian`: each activation's φ, φ' and the Gaussian expectations the recursions need;
- `jacobian`: the singular values of a real model's input-output Jacobian;
- `trace` and `model`: the recursions applied layer by layer to the user's own model (gw.check).
"""

from gradwatch.errors import JacobianError, TheoryError
from gradwatch.theory.jacobian import JacobianSpectrum, jacobian_spectrum
from gradwatch.theory.meanfield import (
    ACTIVATIONS,
    PHASE_TOL,
    MeanField,
    chi1,
    correlation_map,
    critical_sigma_w2,
    gradient_ratio_per_layer,
    mean_field,
    predict_backflow,
    variance_map,
)
from gradwatch.theory.model import LayerPrediction, TheoryComparison

__all__ = [
    "ACTIVATIONS",
    "PHASE_TOL",
    "JacobianError",
    "JacobianSpectrum",
    "LayerPrediction",
    "MeanField",
    "TheoryComparison",
    "TheoryError",
    "chi1",
    "correlation_map",
    "critical_sigma_w2",
    "gradient_ratio_per_layer",
    "jacobian_spectrum",
    "mean_field",
    "predict_backflow",
    "variance_map",
]
