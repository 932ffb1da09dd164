"""Ray Tune sweeps over the stages: alpha (`alpha/`), alignment losses (`loss`), backbones
(`backbone/`) and patching datasets (`dataset/`), on one skeleton (`common`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
