"""scalavit: one Vision Transformer trained with Scala, sliced in width into many sub-networks.

Importing the package registers the ``scala_*`` models with timm's model registry.
"""
from .export import dense_model_args, dense_state_dict, to_timm
from .model import FASHION_MODEL, SlimmableVisionTransformer
from .widths import Channels, WidthGrid, select_channels

__version__ = '0.1.0'
__all__ = ['Channels', 'FASHION_MODEL', 'SlimmableVisionTransformer', 'WidthGrid', 'dense_model_args',
           'dense_state_dict', 'select_channels', 'to_timm']

