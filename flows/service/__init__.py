"""Operations, apart from orchestration: the command line (``cli``), the local Prefect server's lifecycle
and proof (``server``), serving and deploying the flows (``serve``, ``deploy``, ``worker``,
``pool_run``), what was served (``served``) and the policy that judges a deployment run's parameters
against it (``policy``).

The flows never import this package: what a run needs from it (register with the server, see it still
answers, judge the parameters) comes through ``flows.chain.RunHooks``, which ``hooks.ServiceHooks``
implements and the ``alignment.run_hooks`` entry point installs. import-linter holds that line (`.ci/run`).
"""
