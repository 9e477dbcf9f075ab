"""``edgeloop model <task> <action> -e SPEC.yaml [key.sub=value ...]``.

Tasks and actions come from the registry (trainer/tasks/registry.py), so a new task package or
action appears here without editing this file. ``edgeloop model list`` shows them;
``edgeloop model <task> schema`` prints the spec defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task name (classification, detection ...) or 'list'")
    parser.add_argument(
        "action",
        nargs="?",
        help="train, evaluate, inference, prune, retrain, distill, quantize, export; 'schema'",
    )
    parser.add_argument("-e", "--experiment-spec", dest="spec", help="experiment spec YAML")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="dotted overrides, e.g. train.epochs=3 model.backbone=resnet34",
    )


def _split_remainder(args: argparse.Namespace) -> None:
    """argparse cannot mix an option between positionals and a trailing list; the remainder
    holds ``-e SPEC`` and the ``key=value`` overrides in any order."""
    rest, overrides = list(args.overrides or []), []
    while rest:
        item = rest.pop(0)
        if item in ("-e", "--experiment-spec") and rest:
            args.spec = rest.pop(0)
        elif item.startswith("--experiment-spec="):
            args.spec = item.split("=", 1)[1]
        else:
            overrides.append(item)
    args.overrides = overrides


def run(args: argparse.Namespace) -> int:
    from trainer.jobs import run_action
    from trainer.spec import SpecError
    from trainer.tasks.registry import RegistryError, available_tasks, get_task

    _split_remainder(args)
    try:
        if args.task == "list":
            for name in available_tasks():
                try:
                    t = get_task(name)
                    print(f"{name}: {', '.join(sorted(t.actions))}")
                except Exception as exc:  # a task package that fails to import is reported, not fatal
                    print(f"{name}: unavailable ({exc})")
            return 0
        task = get_task(args.task)
        if not args.action:
            print(f"actions of {args.task}: {', '.join(sorted(task.actions))}", file=sys.stderr)
            return 2
        if args.action == "schema":
            print(json.dumps(task.schema.model_json_schema(), indent=2))
            return 0
        task.get_action(args.action)
        if not args.spec:
            print("error: -e/--experiment-spec SPEC.yaml is required", file=sys.stderr)
            return 2
        result = run_action(args.task, args.action, args.spec, args.overrides)
    except (SpecError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log.debug("action failed", exc_info=True)
        print(f"error: {args.task} {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_summary(result.to_dict()), indent=2, default=str))
    return 0


def _summary(d: dict) -> dict:
    metrics = d.get("metrics", {})
    d["metrics"] = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    return d
