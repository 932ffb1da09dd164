"""The networks: open_clip loading (`clip`), zero-shot heads (`heads`), PAINT's weight-space
operations (`weights`) and the multispectral student (`student`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
