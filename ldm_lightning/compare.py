"""`python -m ldm_lightning.compare RUN_A RUN_B …`: paired comparison of `test` runs (see `evaluation/compare.py`)."""

from ldm_lightning.evaluation.compare import main

if __name__ == "__main__":
    main()
