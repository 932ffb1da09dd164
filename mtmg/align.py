"""`python -m mtmg.align`: the command-line face of `mtmg.stages.align.driver`."""

from mtmg.stages.align.driver import AlignConfig, main, run

__all__ = ["AlignConfig", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
