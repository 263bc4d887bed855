"""Prefect flows and deployments: thin orchestration over the stage functions in ``alignment.stages``."""
