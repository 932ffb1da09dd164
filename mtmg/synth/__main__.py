"""`python -m mtmg.synth`: see :func:`mtmg.synth.cli.main`."""

from mtmg.synth.cli import main

raise SystemExit(main())
