"""LiteGPT processor: images (PIL, numpy, DICOM) -> pixel values, prompts -> tokens, and the box text codec.

Shipped as remote code next to the weights: imports only transformers, numpy, PIL and the standard
library at module level (pydicom is imported lazily, only when a DICOM is given).
"""

from __future__ import annotations

# VinDr-CXR local labels (22), exact spelling, CSV column order = canonical index (DESIGN.md §3).
VINDR_LOCAL_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
# VinDr-CXR global labels (6), CSV order.
VINDR_GLOBAL_LABELS = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
NO_FINDING = "No finding"
