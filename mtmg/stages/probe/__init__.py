"""Linear probing of frozen encoders: `config` (the options), `encoders` (an encoder spec ->
a frozen feature extractor), `features` (extraction and its cache), `fit` (the linear
classifier), `driver` (the command's work), `command` (the command line).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
