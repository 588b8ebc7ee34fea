"""Entry point: ``python run.py model=glamm pruner=altp keep=0.1`` (wired by the runner issue)."""

if __name__ == "__main__":
    raise SystemExit("run.py: the runner is not wired yet; see the issues")
