"""pneumonia-hf: a small, Hub-native CNN that tells normal from pneumonia on pediatric chest X-rays."""

from .inference import Prediction, bundled_model_dir, load_model, predict_files
from .model import PneumoniaCNN
from .preprocessing import ImageLoadError, build_eval_transform, load_image

__version__ = "0.1.0"
__all__ = [
    "PneumoniaCNN",
    "build_eval_transform",
    "load_image",
    "load_model",
    "predict_files",
    "bundled_model_dir",
    "Prediction",
    "ImageLoadError",
]
