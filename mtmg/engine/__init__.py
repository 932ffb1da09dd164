"""Plain-PyTorch pieces every stage's loop shares: schedule, steps and checkpoints (`loop`),
evaluation (`evaluate`), metrics (`metrics`) and alpha selection (`select`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
