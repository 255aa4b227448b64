"""unet_jax: the lecture's convolutions, CNNs, autoencoders and the U-Net of Ronneberger et al.
2015 in JAX / Flax linen.

Importing the package adds XLA CPU options that speed up its convolutional networks (see
:mod:`unet_jax.xla_flags`) to ``XLA_FLAGS``, unless ``UNET_JAX_XLA_FLAGS=0`` is set or JAX's
backend is already running.
"""
from unet_jax import xla_flags as _xla_flags

_xla_flags.apply()
