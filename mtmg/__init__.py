"""mtmg: Ray-distributed sweeps for "Mind the Modality Gap" (PAINT patching of CLIP on remote
sensing data, and cross-modal alignment of multispectral encoders into CLIP's space)."""

__version__ = "0.1.0"
