"""Hearing is Seeing: the science. Media decoding, the HDF5 format, SoundNet-8, the GANs, training, metrics.

Nothing here knows about Slurm or Ray clusters; `hpc` runs these pieces at scale.
"""

__version__ = "0.1.0"
