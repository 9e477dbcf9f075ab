"""The task registry: a task (classification, detection ...) is a spec schema plus actions by name.

A task package (``trainer/tasks/<name>/__init__.py``) registers itself on import::

    TASK = register_task("detection", schema=DetectionSpec, check=check_paths)

    @TASK.action("train")
    def train(spec: DetectionSpec, ctx: RunContext) -> ActionOutput: ...

and ``edgeloop model detection train -e spec.yaml`` finds it: :func:`get_task` imports
``trainer.tasks.<name>`` lazily (so the CLI only imports the task it runs). A duplicate task or
action name is an error, never a silent overwrite. ``check(spec, action)`` runs before any work
and raises :class:`trainer.spec.SpecError` for missing paths or inconsistent settings.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
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

    def action(
        self, name: str, *, help: str = "", distributed: bool = False
    ) -> Callable[[ActionFn], ActionFn]:
        """Decorator registering ``fn`` as action ``name`` of this task."""

        def deco(fn: ActionFn) -> ActionFn:
            if name in self.actions:
                raise RegistryError(f"task {self.name!r} already has an action named {name!r}")
            doc = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self.actions[name] = Action(name, fn, doc, distributed)
            return fn

        return deco

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
    check: CheckFn | None = None,
    synthesize: Callable[..., Any] | None = None,
) -> Task:
    if name in _TASKS:
        raise RegistryError(f"a task named {name!r} is already registered")
    task = Task(name=name, schema=schema, check=check, synthesize=synthesize)
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
