"""``alignment``: the command line for work without the UI.

    alignment serve [--recipe R ...]          start the local Prefect server and serve every flow's deployments
    alignment deploy --pool NAME [--recipe R] deploy the flows to a work pool
    alignment worker --pool NAME              run that pool's flow runs here (what deploy recorded, nothing else)
    alignment run [RECIPE] [-p key=value] [--refresh STAGE]   run the flow in this process
    alignment stage STAGE --config x.yaml     run one stage alone (no Prefect)
    alignment status                          server, serve process, recent runs, store
    alignment wait [FLOW_RUN_ID]              follow a run until it ends (default: the latest)
    alignment summary [FLOW_RUN_ID]           UI address and results of a run (default: the latest)
    alignment validate [RECIPE ...]           check recipes and every data file they name
    alignment flows                           the flows, their steps and default recipes
    alignment verify [STAGE/KEY ...] [--fix]  check stored artifacts against their manifests (sha256)
    alignment model fetch [NAME]              fetch and convert a built-in model into the cache
    alignment recipe RECIPE [--json]          print a validated recipe (as deployment parameters)
    alignment approve RUN_ID [--reject]       answer a run waiting for approval before promotion
    alignment stop                            stop the serve process and the server
    alignment credential                      the local server's credential, once it is proven ours
    alignment constitution validate|show|diff|import ...   check, print, compare or import constitutions
"""

import argparse
import json
import os
import sys
from typing import Any

import httpx

from alignment import stages
from alignment.config.loader import RecipeError, load_yaml_model
from alignment.constitution import ConstitutionError
from flows import registry
from flows.registry import load_recipe, recipe_path
from flows.service import serve, server


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RecipeError(f"--param {pair!r}: expected key=value, e.g. -p dpo.beta=0.2")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_serve(a) -> None:
    recipes = serve.ensure_serving(a.recipe, allow=a.allow, allow_files=a.allow_file,
                                    unsafe=a.allow_unsafe_parameters)
    st = server.status()
    served = ", ".join(f"{registry.flow_of(recipe_path(r))} (recipe {r!r})" for r in recipes)
    print(f"Prefect server: {st['ui']}  (API {st['api']})\nServing deployments of {served}; logs in {st['logs']}\n"
          "Run:  prefect deployment run sft-to-dpo/sft-to-dpo --watch   (any FLOW/FLOW; `alignment flows` lists them)")


def cmd_deploy(a) -> None:
    from flows.service.deploy import main as deploy_main

    server.ensure_server()
    deploy_main(["--pool", a.pool, *(x for r in (a.recipe or []) for x in ("--recipe", r))])


def cmd_worker(a) -> None:
    from flows.service.worker import main as worker_main

    worker_main(a.pool, a.limit)


def cmd_credential(a) -> None:
    """The local server's credential, printed only once the server is proven ours (the activated shell's
    `prefect` asks for it per command); nothing when the API is elsewhere or nothing listens yet."""
    if not server.is_local_api() or server.probe() == "down":
        return
    server.connect()
    print(os.environ["PREFECT_API_AUTH_STRING"])


def cmd_run(a) -> None:
    spec, recipe = load_recipe(a.recipe, _parse_params(a.param))
    server.ensure_server()
    state = spec.function(recipe=recipe, refresh=a.refresh, return_state=True)
    if not state.is_completed() and server.reachable() is not None:
        raise RuntimeError(_server_lost(state.message or ""))
    summary(str(state.state_details.flow_run_id))
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        sys.exit(1)


def _server_lost(detail: str) -> str:
    return (f"lost the Prefect server at {server.api_url()} during the run{': ' + detail if detail else ''}. "
            "What the run committed stays in the store. Start the server again (`alignment serve`, or any "
            "`alignment run`; it marks this run Crashed) and rerun: committed stages are reused")


def cmd_stage(a) -> None:
    config = load_yaml_model(a.config, stages.spec(a.stage).config, _parse_params(a.param))
    result = stages.runner(a.stage)(config)
    print(json.dumps(result.to_dict(), indent=2, default=str))


def _latest_run_id() -> str | None:
    """The latest run of any of the project's flows (``flows.registry``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(registry.names()))),
                                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return str(runs[0].id) if runs else None


def summary(run_id: str | None = None, rows: int = 6) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    server.connect()
    run_id = run_id or _latest_run_id()
    if run_id is None:
        print(f"no run of {', '.join(registry.names())} yet")
        return
    with get_client(sync_client=True) as c:
        run = c.read_flow_run(run_id)
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    by_key = {a.key: a for a in arts if a.key}
    print(f"\nFlow run {run.name} ({run.id}): {run.state_name}, {run.total_run_time.total_seconds():.0f} s")
    print(f"Open in the Prefect UI: {server.ui_url()}/runs/flow-run/{run.id}")
    if server.is_local_api():
        print(f"  (the UI asks once for the server's credential: paste the line in {server.credential_path()})")
    print(f"All artifacts (summaries, curves, responses): {server.ui_url()}/artifacts")
    flow = next((k.removesuffix("-results") for k in by_key if k.endswith("-results")), None)
    if flow is None:
        return
    print("\n" + by_key[f"{flow}-results"].data)
    if f"{flow}-responses" in by_key:
        table = json.loads(by_key[f"{flow}-responses"].data)
        cols = [k for k in table[0] if k != "prompt"] if table else []
        print(f"\nHeld-out prompts (first {min(rows, len(table))} of {len(table)}): {' → '.join(cols)}")
        for r in table[:rows]:
            print(f"\n  Q: {r['prompt']}")
            for col in cols:
                print(f"  {col:>4}: {r.get(col, '')[:160]!s}".replace("\n", " "))


def wait(run_id: str | None, poll: float = 2.0) -> bool:
    """Follow a flow run until it ends, one line per change (stage states and progress); True if Completed."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    server.connect()
    run_id = run_id or _latest_run_id()
    if run_id is None:
        print(f"no run of {', '.join(registry.names())} yet")
        return False
    last, t0 = "", time.time()
    with get_client(sync_client=True) as c:
        while True:
            run = c.read_flow_run(run_id)
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            progress = {a.key.removesuffix("-progress"): a.data for a in arts if a.key and a.key.endswith("-progress")}
            parts = []
            for t in sorted(tasks, key=lambda t: t.expected_start_time or t.created):
                pct = progress.get(t.name.replace("_", "-"))  # artifact keys allow [a-z0-9-]
                shown = f" {pct:.0f}%" if t.state_name == "Running" and isinstance(pct, int | float) else ""
                parts.append(f"{t.name}: {t.state_name}{shown}")
            line = f"{run.state_name}  " + "  ".join(parts)
            if line != last:
                print(f"[{time.time() - t0:6.0f} s] {line}", flush=True)
                if run.state and run.state.is_paused() and not last.startswith("Paused"):
                    print(f"waiting for approval: press Resume on the run's page in the UI, or `alignment approve "
                          f"{run.id}` (--reject to refuse)", flush=True)
                last = line
            if run.state and run.state.is_final():
                if not run.state.is_completed():
                    print(f"flow run {run.name} ended {run.state_name}: {run.state.message}")
                return run.state.is_completed()
            time.sleep(poll)


def cmd_status(a) -> None:
    from alignment.artifacts import ArtifactStore

    st = server.status()
    print(json.dumps(st, indent=2))
    store = ArtifactStore()
    if store.root.is_dir():
        for stage_dir in sorted(p for p in store.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            keys = sorted(p.name for p in stage_dir.iterdir() if (p / "manifest.json").is_file())
            print(f"store {stage_dir.name}: {len(keys)} artifact(s) {' '.join(keys[-3:])}")
    if st["server_healthy"]:
        summary(None, rows=0)


def cmd_validate(a) -> None:
    """Every prompt template renders; every recipe, its data, models and launch configs check out; what the
    data layer drops or counts (identical pairs, rows over max_length) is reported."""
    from alignment.prompts import validate_all

    print(f"ok  prompts/: {len(validate_all())} templates render")
    for name in a.recipes or registry.recipe_names():
        spec, recipe = load_recipe(name)
        spec.check(recipe)
        print(f"ok  {recipe_path(name)}  ({spec.name}: {len(spec.steps(recipe))} steps)")
        for line in registry.data_report(spec, recipe):
            print(f"    {line}")


def cmd_flows(a) -> None:
    """Every flow the registry finds: its module, steps (of its default recipe) and default recipe."""
    for name, spec in registry.flows().items():
        line = f"{name:<20} {spec.module}  default recipe: {spec.default_recipe or '(none: serve it with --recipe)'}"
        if spec.default_recipe:
            line += "\n" + " " * 21 + "steps: " + " → ".join(spec.steps(load_recipe(spec.default_recipe)[1]))
        print(line + (f"\n{' ' * 21}{spec.description}" if spec.description else ""))


def cmd_verify(a) -> None:
    """Every file of every artifact (or the ones named) against its manifest's size and sha256."""
    from alignment.artifacts import ArtifactStore

    store = ArtifactStore()
    ids = a.artifacts or [f"{s.name}/{k.name}" for s in sorted(store.root.glob("[!.]*")) if s.is_dir()
                          for k in sorted(s.iterdir()) if k.is_dir()]
    damaged = 0
    for artifact_id in ids:
        stage, _, key = artifact_id.partition("/")
        problem = store.problem(stage, key, full=True)
        if problem is None:
            print(f"ok       {artifact_id}")
            continue
        damaged += 1
        moved = f"; moved to {store.set_aside(stage, key, problem)}" if a.fix and problem != "missing" else ""
        print(f"DAMAGED  {artifact_id}: {problem}{moved}")
    print(f"{len(ids) - damaged} of {len(ids)} artifacts whole" + ("" if not damaged or a.fix else
          "; `alignment verify --fix` moves the damaged ones aside (the next run rebuilds them)"))
    if damaged and not a.fix:
        sys.exit(1)


def cmd_model(a) -> None:
    from alignment.config import ModelSpec
    from alignment.models import resolve_model_path

    print(resolve_model_path(ModelSpec(name=a.name)))


def cmd_recipe(a) -> None:
    _, recipe = load_recipe(a.recipe, _parse_params(a.param))
    print(json.dumps({"recipe": recipe.model_dump(mode="json")}) if a.json else recipe.model_dump_json(indent=2))


def cmd_constitution(a) -> None:
    from pathlib import Path

    from alignment.constitution import diff, dump, import_paper, load_constitution

    if a.action == "validate":
        paths = [p for arg in (a.paths or ["constitutions"]) for p in
                 (sorted(Path(arg).rglob("*.yaml")) if Path(arg).is_dir() else [Path(arg)])]
        if not paths:
            raise ConstitutionError(f"no constitution files under {a.paths or ['constitutions']}")
        for p in paths:
            c = load_constitution(p)
            print(f"ok  {p}  {c.name} v{c.version} hash {c.hash}: {len(c.for_revision())} critique/revision, "
                  f"{len(c.for_feedback())} feedback principles")
    elif a.action == "show":
        c = load_constitution(a.paths[0])
        print(f"# {c.name} v{c.version}  hash {c.hash}\n# {c.description}")
        for p in c.principles:
            kinds = "+".join(k for k in ("critique", "revision", "comparison") if getattr(p, k))
            print(f"- {p.id} [{kinds}] {' '.join(p.tags)}\n    {(p.critique or p.comparison)[:120]}")
    elif a.action == "diff":
        old, new = load_constitution(a.paths[0]), load_constitution(a.paths[1])
        print(f"hash {old.hash} -> {new.hash}")
        print("\n".join(diff(old, new)) or "no differences")
    else:  # import: critique/revision json, then optional feedback json and few-shot files
        files = [Path(p) for p in a.paths] + [None] * (4 - len(a.paths))
        text = dump(import_paper(*files[:4]))
        if a.output:
            Path(a.output).write_text(text)
            print(f"wrote {a.output}")
        else:
            print(text)


def cmd_approve(a) -> None:
    """Answer a run paused for approval (`promote.approval`), as the UI's Resume form does."""
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    try:
        run_id = UUID(a.run_id)
    except ValueError:
        raise ValueError(f"approve: {a.run_id!r} is not a flow run id (`alignment status` lists runs)") from None
    import time

    from prefect.exceptions import NotPausedError, ObjectNotFound

    answer = {"approve": not a.reject, "reviewer": a.reviewer, "comment": a.comment}
    server.connect()
    try:
        for attempt in range(10):  # the run shows Paused a moment before its form is saved
            try:
                resume_flow_run(run_id, run_input=answer)
                break
            except RuntimeError as e:
                if "input schema not found" not in str(e).lower() or attempt == 9:
                    raise
                time.sleep(1)
    except ObjectNotFound:
        raise ValueError(f"approve: no flow run {run_id} on this server (`alignment status` lists runs)") from None
    except NotPausedError:
        raise ValueError(f"approve: flow run {run_id} is not waiting for approval (only a run paused before "
                         "`promote` is)") from None
    print(f"{'rejected' if a.reject else 'approved'} flow run {run_id}; it resumes within a few seconds")


def cmd_stop(a) -> None:
    for name, stopped in server.stop_all().items():
        print(f"{name}: {'stopped' if stopped else 'not running'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the server (if needed) and serve deployments in the background")
    s.add_argument("--recipe", action="append", default=[], metavar="RECIPE",
                   help="a recipe to serve (repeatable; its `flow:` key says which flow); the other flows serve "
                   "their default recipe")
    s.add_argument("--allow", action="append", default=[], metavar="KEY[=MIN..MAX]",
                   help="deployment runs may also change KEY (within MIN..MAX), e.g. --allow dpo.beta=0.05..0.5")
    s.add_argument("--allow-file", action="append", default=[], metavar="KEY",
                   help="deployment runs may point KEY at a project file, e.g. --allow-file eval_prompts.path "
                   "(recipes without gates or promote)")
    s.add_argument("--allow-unsafe-parameters", action="store_true",
                   help="let deployment runs change any recipe key, gates, promote, trust_remote_code, engines and "
                   "launch included (only where every caller of the API is trusted)")
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("deploy", help="deploy the flows to a Prefect work pool (instead of serve): a worker runs them")
    s.add_argument("--pool", required=True, help="work pool (created as a `process` pool if missing)")
    s.add_argument("--recipe", action="append", help="recipes to deploy (default: one per flow)")
    s.set_defaults(fn=cmd_deploy)
    s = sub.add_parser("worker", help="run the flows of a work pool here (what `alignment deploy` made; job variables refused)")
    s.add_argument("--pool", required=True, help="the work pool")
    s.add_argument("--limit", type=int, default=1, help="flow runs at a time")
    s.set_defaults(fn=cmd_worker)
    sub.add_parser("credential", help="print the local server's credential once it is proven ours (for `prefect`)"
                   ).set_defaults(fn=cmd_credential)
    s = sub.add_parser("run", help="run a recipe's flow (the one its `flow:` key names) in this process")
    s.add_argument("recipe", nargs="?", default="sft-to-dpo")
    s.add_argument("-p", "--param", action="append", default=[], help="dotted override, e.g. dpo.beta=0.2")
    s.add_argument("--refresh", action="append", default=[],
                   help="stage or step to force, e.g. dpo, feedback, reward or round-2 (that round and the later ones)")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("stage", help="run one stage alone from a stage config YAML")
    s.add_argument("stage", choices=stages.names())
    s.add_argument("--config", required=True)
    s.add_argument("-p", "--param", action="append", default=[])
    s.set_defaults(fn=cmd_stage)
    sub.add_parser("status", help="server, serve process, store, latest run").set_defaults(fn=cmd_status)
    s = sub.add_parser("summary", help="UI address and results of a flow run")
    s.add_argument("run_id", nargs="?")
    s.set_defaults(fn=lambda a: summary(a.run_id))
    s = sub.add_parser("wait", help="follow a flow run until it ends (default: the latest run of any flow)")
    s.add_argument("run_id", nargs="?")
    s.set_defaults(fn=lambda a: sys.exit(0 if wait(a.run_id) else 1))
    sub.add_parser("flows", help="the flows, their steps and default recipes").set_defaults(fn=cmd_flows)
    s = sub.add_parser("validate", help="validate recipes and their data")
    s.add_argument("recipes", nargs="*")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("verify", help="check stored artifacts against their manifests (sizes and sha256)")
    s.add_argument("artifacts", nargs="*", help="STAGE/KEY (default: every artifact in the store)")
    s.add_argument("--fix", action="store_true", help="move damaged artifacts aside so the next run rebuilds them")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("model", help="model cache")
    s.add_argument("action", choices=["fetch"])
    s.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    s.set_defaults(fn=cmd_model)
    s = sub.add_parser("recipe", help="print a validated recipe")
    s.add_argument("recipe")
    s.add_argument("--json", action="store_true", help="as JSON deployment parameters ({'recipe': ...})")
    s.add_argument("-p", "--param", action="append", default=[])
    s.set_defaults(fn=cmd_recipe)
    s = sub.add_parser("approve", help="approve (or --reject) a run paused for approval before promotion")
    s.add_argument("run_id")
    s.add_argument("--reject", action="store_true", help="reject: nothing is promoted")
    s.add_argument("--reviewer", default=os.environ.get("USER", ""), help="who decides (default: $USER)")
    s.add_argument("--comment", default="", help="why (kept in the release record)")
    s.set_defaults(fn=cmd_approve)
    sub.add_parser("stop", help="stop the serve process and the server").set_defaults(fn=cmd_stop)
    s = sub.add_parser("constitution", help="validate, show, diff or import constitutions",
                       description="validate [FILES|DIRS]; show FILE; diff OLD NEW; import CRITIQUE_REVISION.json "
                       "[FEEDBACK.json [CRITIQUE_FEW_SHOT.json [FEEDBACK_FEW_SHOT.json]]] [-o OUT.yaml]")
    s.add_argument("action", choices=["validate", "show", "diff", "import"])
    s.add_argument("paths", nargs="*")
    s.add_argument("-o", "--output")
    s.set_defaults(fn=cmd_constitution)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    server.apply_defaults()
    try:
        args.fn(args)
    except (ValueError, OSError) as e:  # every input error is a ValueError (data, recipe, model, constitution,
        print(f"error: {e}", file=sys.stderr)  # prompt, artifact, pydantic); a file: OSError. Nothing was written.
        sys.exit(2)
    except RuntimeError as e:  # a stage failed (a launch's last log lines, a server that did not start)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except httpx.TransportError as e:  # the server went away under a command, or another endpoint failed
        lost = server.reachable() is not None
        print(f"error: {_server_lost(str(e)) if lost else f'network: {e}'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
