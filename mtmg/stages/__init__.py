"""The method's stages as library code: PAINT patching (`patch`), cross-modal alignment
(`align`), and the demo's small zero-shot CLIP (`pretrain`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
