"""The paper's protocol in one command (`sweeps/paper.py --spec PAPER.yaml`): every stage of
"Mind the Modality Gap" run in order from one spec, each skipped when it finished with the same
options, and the paper's tables with its published figures beside mtmg's."""
