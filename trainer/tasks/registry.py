"""The task registry: a task (classification, detection ...) is a spec schema plus actions by name.

One registration style for every task, as TAO users know it: an action per module. A task
package ``trainer/tasks/<name>/`` has an ``actions/`` subpackage with one module per action::

    trainer/tasks/detection/actions/train.py:
        DISTRIBUTED = True          # optional: honours train.num_gpus > 1 (torchrun relaunch)
        def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
            "Train an RT-DETR detector (best val mAP kept)."   # first line = help text

and its ``__init__.py`` registers the task on import::

    TASK = register_task("detection", schema=DetectionSpec, actions=actions, check=check_paths)

The action's name is its module's name. ``edgeloop model detection train -e spec.yaml`` finds it:
:func:`get_task` imports ``trainer.tasks.<name>`` lazily (so the CLI only imports the task it
runs). A duplicate task or action name is an error, never a silent overwrite.
``check(spec, action)`` runs before any work and raises :class:`trainer.spec.SpecError` for
missing paths or inconsistent settings.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from trainer.runtime import ActionOutput, RunContext

ActionFn = Callable[[Any, "RunContext"], "ActionOutput"]
CheckFn = Callable[[Any, str], None]


class RegistryError(KeyError):
    """Unknown or duplicate task/action name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass
class Action:
    name: str
    fn: ActionFn
    help: str = ""
    distributed: bool = False  # True: honours train.num_gpus > 1 (torchrun relaunch)


@dataclass
class Task:
    name: str
    schema: type[BaseModel]
    check: CheckFn | None = None
    synthesize: Callable[..., Any] | None = None
    actions: dict[str, Action] = field(default_factory=dict)

    def add_action(self, module: ModuleType) -> Action:
        """Register the action module ``module`` (its ``run``, ``DISTRIBUTED`` and docstring)."""
        name = module.__name__.rsplit(".", 1)[-1]
        fn = getattr(module, "run", None)
        if not callable(fn):
            raise RegistryError(f"action module {module.__name__} has no run(spec, ctx) function")
        if name in self.actions:
            raise RegistryError(f"task {self.name!r} already has an action named {name!r}")
        doc = ((fn.__doc__ or module.__doc__ or "").strip().splitlines() or [""])[0]
        action = Action(name, fn, doc, bool(getattr(module, "DISTRIBUTED", False)))
        self.actions[name] = action
        return action

    def get_action(self, name: str) -> Action:
        if name not in self.actions:
            raise RegistryError(
                f"task {self.name!r} has no action {name!r}; actions: {', '.join(sorted(self.actions))}"
            )
        return self.actions[name]


_TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    *,
    schema: type[BaseModel],
    actions: ModuleType | None = None,
    check: CheckFn | None = None,
    synthesize: Callable[..., Any] | None = None,
) -> Task:
    """Register task ``name``; every module of the ``actions`` package becomes an action."""
    if name in _TASKS:
        raise RegistryError(f"a task named {name!r} is already registered")
    task = Task(name=name, schema=schema, check=check, synthesize=synthesize)
    if actions is not None:
        for info in sorted(pkgutil.iter_modules(actions.__path__), key=lambda m: m.name):
            if not info.ispkg and not info.name.startswith("_"):
                task.add_action(importlib.import_module(f"{actions.__name__}.{info.name}"))
    _TASKS[name] = task
    return task


def available_tasks() -> list[str]:
    """Task packages under trainer/tasks (registered or not yet imported)."""
    import trainer.tasks as pkg

    names = {m.name for m in pkgutil.iter_modules(pkg.__path__) if m.ispkg}
    return sorted(names | set(_TASKS))


def get_task(name: str) -> Task:
    if name not in _TASKS:
        if name not in available_tasks():
            raise RegistryError(f"unknown task {name!r}; tasks: {', '.join(available_tasks())}")
        importlib.import_module(f"trainer.tasks.{name}")
        if name not in _TASKS:
            raise RegistryError(f"trainer.tasks.{name} was imported but did not call register_task({name!r})")
    return _TASKS[name]
