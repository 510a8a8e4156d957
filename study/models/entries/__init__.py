"""The backbone entries of ``study.models.backbones.BACKBONES``: one module per backbone."""
