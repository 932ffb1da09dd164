"""`python -m mtmg.report`."""

from mtmg.report.build import main

raise SystemExit(main())
