"""The method's stages as library code: PAINT patching (`patch`), cross-modal alignment
(`align`), the demo's small zero-shot CLIP (`pretrain`) and baseline CLIPs' zero-shot rows
(`zeroshot`). Patching and alignment share their options (`config`), their worker's training
skeleton (`skeleton`), their driver's Ray Train job (`job`) and how their commands end (`cli`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
