"""unet_jax: the lecture's convolutions, CNNs, autoencoders and the U-Net of Ronneberger et al.
2015 in JAX / Flax linen.

Importing the package sets glibc's malloc to keep XLA's per-step CPU buffers mapped
(:mod:`unet_jax.cpu_malloc`; ``UNET_JAX_MALLOC=0`` turns it off). With ``UNET_JAX_XLA_FLAGS=1``
in the environment it also adds the XLA CPU options of :mod:`unet_jax.xla_flags` to
``XLA_FLAGS`` (they no longer speed up the measured CPU steps; see there).
"""
from unet_jax import cpu_malloc as _cpu_malloc
from unet_jax import xla_flags as _xla_flags

_cpu_malloc.apply()
_xla_flags.apply()
