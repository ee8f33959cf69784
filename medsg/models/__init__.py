"""SG-Former models; importing this registers sgformer_s/m/b/tiny in timm's registry."""

from medsg.models.checkpoint import load_checkpoint
from medsg.models.factory import create_model
from medsg.models.sgformer import SGFormer, checkpoint_filter_fn, sincos_pos_embed_2d, valid_img_sizes

__all__ = [
    "SGFormer",
    "checkpoint_filter_fn",
    "create_model",
    "load_checkpoint",
    "sincos_pos_embed_2d",
    "valid_img_sizes",
]
