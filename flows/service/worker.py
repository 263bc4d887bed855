"""`alignment worker --pool NAME`: Prefect's process worker, except that what a flow run process is comes
from this machine, not from the API.

A plain `prefect worker` builds each run's command, environment and working directory from the pool's
base job template and the job variables of the deployment and the run, all of which a holder of the API
credential can PATCH (`ALIGNMENT_HOME=/`, `PYTHONPATH`, the command itself). This worker throws that
configuration away and runs every flow run as ``flows.service.deploy.command()`` in this checkout, with its own
environment plus the literal settings of ``flows.service.deploy.run_environment``; a run that carries
job variables is refused before anything starts. ``flows.service.pool_run`` then checks the deployment against
what `alignment deploy` recorded. While the API is our local server, the worker stops when that
server's process is gone (its polls would otherwise carry the credential to whoever takes the port).
"""

import asyncio
import os

from prefect.states import Failed
from prefect.utilities.processutils import command_to_string
from prefect.workers.process import ProcessWorker, ProcessWorkerResult

from flows.service import deploy, server


class AlignmentWorker(ProcessWorker):
    type = "process"  # it serves `process` pools ...

    @classmethod
    def __dispatch_key__(cls) -> str:
        return "alignment-process"  # ... without replacing Prefect's ProcessWorker in its type registry

    async def run(self, flow_run, configuration, task_status=None):
        # read again: resolving the configuration pops `env` out of the run's job variables it was given
        carried = (await self.client.read_flow_run(flow_run.id)).job_variables
        if carried:
            message = (f"refused: the run carries job_variables {sorted(carried)}; what a pool's runs "
                       "execute is fixed by `alignment deploy` and `alignment worker`")
            await self.client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)
            self.get_flow_run_logger(flow_run).error(message)
            if task_status is not None:
                task_status.started(0)
            return ProcessWorkerResult(identifier="refused", status_code=0)
        configuration.command = command_to_string(deploy.command())
        configuration.working_dir = server.ROOT
        configuration.env = {**os.environ, **self.run_env, "PREFECT__FLOW_RUN_ID": str(flow_run.id)}
        return await super().run(flow_run, configuration, task_status)


def main(pool: str, limit: int | None = None) -> None:
    server.ensure_server()
    from flows.service import served

    if not served.folder(deploy.by(pool)).is_dir():
        raise ValueError(f"--pool {pool}: nothing was deployed to it from this machine (no records in "
                         f"{served.folder(deploy.by(pool))}); run `alignment deploy --pool {pool}` first")
    if server.is_local_api():  # its polls carry the credential: stop the moment the port is not our server
        server.watch("worker")
    worker = AlignmentWorker(work_pool_name=pool, limit=limit)
    worker.run_env = deploy.run_environment(pool)  # the records as they are now: runs are judged by these
    asyncio.run(worker.start())
