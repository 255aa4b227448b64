"""unet_jax: the lecture's convolutions, CNNs, autoencoders and the U-Net of Ronneberger et al.
2015 in JAX / Flax linen.

With ``UNET_JAX_XLA_FLAGS=1`` in the environment, importing the package adds XLA CPU options
that speed up CPU training (see :mod:`unet_jax.xla_flags`) to ``XLA_FLAGS``.
"""
from unet_jax import xla_flags as _xla_flags

_xla_flags.apply()
