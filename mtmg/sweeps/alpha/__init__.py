"""The alpha sweep: `driver` runs its phases (`config`, `inputs`, `early`, `selection`,
`heldout`, `outputs`); `trial` is the code its Tune trials import.

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
