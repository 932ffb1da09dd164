"""`python -m mtmg.patch`: the command-line face of `mtmg.stages.patch.driver`."""

from mtmg.stages.patch.driver import PatchConfig, main, run

__all__ = ["PatchConfig", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
