"""MedKLIP-style knowledge-enhanced entity existence on MIMIC-CXR (the repository's second model).

`configuration_medklip.py` and `modeling_medklip.py` are the remote code saved next to the weights; the other
modules are library code: `knowledge` (descriptions), `checkpoint` (build / load real weights / save), `data`
(MIMIC existence rows -> training examples), `training` (Trainer, arguments, model card) and `evaluation`
(predictions in eval.py's record format, attention heatmaps).
"""

from .configuration_medklip import MedKLIPConfig
from .modeling_medklip import MedKLIPModel, MedKLIPOutput

__all__ = ["MedKLIPConfig", "MedKLIPModel", "MedKLIPOutput"]
