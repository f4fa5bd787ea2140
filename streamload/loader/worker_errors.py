"""A worker's exception, carried to the trainer and raised there as its own type.

DataLoader re-raises an exception from a worker process as the exception's original type, with
the worker's traceback in the message (``ExceptionWrapper.reraise``), so ``except KeyError:``
around a training loop works whatever ``num_workers`` is. StreamLoader does the same, and the
exception is also a `streamload.errors.WorkerError`, so ``except sl.WorkerError:`` catches every
worker failure too:

- in the worker, `describe` turns the exception being handled into an ERROR record body:
  ``E`` + ``module:qualname`` of its type + NUL + the formatted traceback (no pickle: the type
  travels by name, as pickle would send it);
- in the trainer, `rebuild` looks the type up by name and builds an instance of a class derived
  from both that type and WorkerError (one class per original type, named like it, so a
  traceback still reads ``KeyError: Caught KeyError in DataLoader worker process 0 ...``),
  with DataLoader's message: ``Caught <Type> in DataLoader worker process <id>.\\nOriginal
  <traceback>``.

As in DataLoader, a type that takes a ``message=`` keyword gets the text that way, and a type that
cannot be built from one string (several required arguments) or cannot be found by name (a class
defined inside a function) becomes a plain WorkerError (DataLoader: a plain RuntimeError) with the
same message. At num_workers=0 there is no worker: the exception propagates unchanged, as in
DataLoader.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

from streamload.errors import WorkerError
from streamload.loader import protocol


def describe(exc: BaseException | None = None, note: str = "") -> bytes:
    """The ERROR record body of ``exc`` (default: the exception being handled), ``note`` (a
    line of context, e.g. how the ring got its size) after its traceback."""
    if exc is None:
        exc = sys.exc_info()[1]
    if exc is None:
        raise ValueError("describe() needs an exception (none is being handled)")
    cls = type(exc)
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    if note:
        text += note + "\n"
    return protocol.exception_record(f"{cls.__module__}:{cls.__qualname__}", text)


def rebuild(worker_id: int, body: bytes) -> BaseException:
    """The exception the trainer raises for ERROR record ``body`` of worker ``worker_id``."""
    type_name, text = protocol.exception_parts(body)
    original = _resolve(type_name)
    # The class name, also for a type the trainer cannot find (``f.<locals>.MyError``).
    name = type_name.rpartition(":")[2].rpartition(".")[2] or "an exception"
    message = f"Caught {name} in DataLoader worker process {worker_id}.\nOriginal {text}"
    if original is None:
        return WorkerError(message)
    cls = worker_type(original)
    if cls is None:
        return WorkerError(message)
    return _instantiate(cls, message)


def worker_type(original: type[BaseException]) -> type[BaseException] | None:
    """The class a worker's ``original`` exception is raised as: derived from ``original`` and
    WorkerError (``original`` itself when it already is one); None if ``original`` cannot be
    subclassed."""
    if issubclass(original, WorkerError):
        return original
    if original not in _DERIVED:
        _DERIVED[original] = _derive(original)
    return _DERIVED[original]


# One derived class per original type and process: ``except`` clauses and ``type(a) is
# type(b)`` see the same class for every batch that fails the same way.
_DERIVED: dict[type[BaseException], type[BaseException] | None] = {}


def _derive(original: type[BaseException]) -> type[BaseException] | None:
    def __str__(self: BaseException) -> str:
        # KeyError would show repr() of its one argument: keep the traceback readable (as
        # DataLoader's KeyErrorMessage does).
        if len(self.args) == 1 and isinstance(self.args[0], str):
            return self.args[0]
        return original.__str__(self)

    def __reduce__(self: BaseException) -> tuple[Any, ...]:
        return _unpickle, (f"{original.__module__}:{original.__qualname__}", str(self))

    namespace = {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": f"{original.__name__} raised in a StreamLoader worker (also a WorkerError).",
        "__str__": __str__,
        "__reduce__": __reduce__,
    }
    try:
        return type(original.__name__, (original, WorkerError), namespace)
    except TypeError:  # not subclassable, or a layout conflict with RuntimeError
        return None


def _instantiate(cls: type[BaseException], message: str) -> BaseException:
    if getattr(cls, "message", None):  # DataLoader: such types take message=
        try:
            return cls(message=message)  # type: ignore[call-arg]
        except Exception:
            pass
    try:
        return cls(message)
    except Exception:  # needs other arguments: DataLoader raises RuntimeError(msg) here
        return WorkerError(message)


def _resolve(type_name: str) -> type[BaseException] | None:
    """The exception class named ``module:qualname`` (importing the module as pickle would)."""
    module_name, _, qualname = type_name.partition(":")
    if not qualname or "<locals>" in qualname:
        return None
    if module_name == "__mp_main__":  # the trainer's __main__, as a spawned worker names it
        module_name = "__main__"
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _unpickle(type_name: str, message: str) -> BaseException:
    """Rebuild a pickled worker exception (the derived classes exist only in this process)."""
    original = _resolve(type_name)
    cls = worker_type(original) if original is not None else None
    return WorkerError(message) if cls is None else _instantiate(cls, message)
