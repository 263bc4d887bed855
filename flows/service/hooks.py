"""The run hooks the service gives the chain (``flows.chain.RunHooks``), installed through the
``alignment.run_hooks`` entry point in every process that runs a flow: the serve process's runs, a
pool's runs, ``alignment run`` and the tests."""

from typing import Any

from flows.chain import RunHooks


class ServiceHooks(RunHooks):
    def check_parameters(self, recipe: Any) -> None:
        from flows.service import policy

        policy.check(recipe)

    def register(self, flow_run_id: Any) -> None:
        from flows.service.server import register_flow_run

        register_flow_run(flow_run_id)

    def reachable(self) -> Exception | None:
        from flows.service.server import reachable

        return reachable()
