"""Zero-shot baselines: `config` (the options and model specs), `driver` (score CLIPs with the
patching stage's evaluator), `command` (`python -m mtmg.zeroshot`)."""
