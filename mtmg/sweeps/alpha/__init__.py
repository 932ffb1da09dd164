"""The alpha sweep: its driver and the trial code its Tune trials import (`trial`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
