"""The method's stages as library code: PAINT patching (`patch`), cross-modal alignment
(`align`), and the demo's small zero-shot CLIP (`pretrain`). Patching and alignment share their
options (`config`), their worker's training skeleton (`skeleton`), their driver's Ray Train job
(`job`) and how their commands end (`cli`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
