"""The paper's method: DDC-only and ALTP pruners (importing registers them)."""
