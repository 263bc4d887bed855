"""An alignment pipeline for RLHF, DPO and Constitutional AI: stages, data, models and artifacts.

Importing this package is cheap: torch, TRL and vLLM are imported inside the functions that need them.
"""

__version__ = "0.1.0"
