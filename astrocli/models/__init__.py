"""The astro model zoo.

Importing this package registers every model with the zoo and with timm, so both
``astrocli.models.create_model(name, ...)`` and ``timm.create_model(name, ...)`` build them.
"""

from astrocli.models import astroformer, baselines, cct, cvt, resnet_cifar, vit, vit_lite  # noqa: F401  (registration)
from astrocli.models.adapt import adapt_state_dict
from astrocli.models.registry import (
    FAMILIES,
    ModelError,
    ModelInfo,
    count_params,
    create_model,
    get_model_info,
    list_models,
    meta_param_count,
    set_fused_attn,
)

__all__ = [
    "FAMILIES",
    "ModelError",
    "ModelInfo",
    "adapt_state_dict",
    "count_params",
    "create_model",
    "get_model_info",
    "list_models",
    "meta_param_count",
    "set_fused_attn",
]
