"""liftplace: stable knowledge distillation of tiny diffusion models (LIFT and PLACE)."""

from liftplace.losses import FeatureKD, LiftPlaceOutput, diffusion_loss, lift_place, outkd
from liftplace.methods import METHOD_NAMES, METHODS, get_method

__version__ = "0.1.0"

__all__ = [
    "FeatureKD",
    "LiftPlaceOutput",
    "METHODS",
    "METHOD_NAMES",
    "diffusion_loss",
    "get_method",
    "lift_place",
    "outkd",
    "__version__",
]
