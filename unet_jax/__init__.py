"""unet_jax: the lecture's convolutions, CNNs, autoencoders and the U-Net of Ronneberger et al.
2015 in JAX / Flax linen.

Importing the package changes nothing process-wide; entry points call
:func:`unet_jax.runtime.setup` for the malloc and logging settings they want.
"""
