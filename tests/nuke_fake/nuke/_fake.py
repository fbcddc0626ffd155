"""Test-side controls of the fake ``nuke`` module: the main loop, the user's clicks, records.

Nothing here exists in Nuke; the plugin never imports this module. A test (on the main
thread) drives the fake like this::

    from nuke import _fake as fake
    fake.reset()
    fake.press(node, "execute")                 # the user clicks Execute
    fake.pump_until(lambda: ..., timeout=5)     # Nuke's event loop runs queued calls
    assert fake.violations() == []
"""

from __future__ import annotations

import re
import runpy
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import nuke as _nuke

__all__ = [
    "reset",
    "shutdown",
    "violations",
    "take_violations",
    "errors",
    "take_errors",
    "messages",
    "renders",
    "pump",
    "pump_until",
    "press",
    "user_set",
    "panel_press",
    "panel_set",
    "progress_tasks",
    "cancel_progress",
    "cancel_render_after",
    "set_gui",
    "set_frame_range",
    "queued",
    "run_nuke_t",
    "on_render_frame",
    "set_ocio_config",
    "quit",
    "read_frame",
    "strip_frame_range",
]

# A number or a frame range as Nuke reads one on its command line: 10, -3, 1-20, 1,20, 1-20x2
# (Foundry, "Defining Frame Ranges").
_FRAME_RANGE = re.compile(r"^-?\d+(?:[-,]-?\d+(?:x\d+)?)?$")


def reset() -> None:
    """A fresh, empty script with a GUI; every record cleared."""
    _nuke._main_only("_fake.reset")
    _nuke._shutdown.set()  # release workers still blocked on the previous test's queue
    with _nuke._queue_cond:
        _nuke._queue.clear()
    _nuke._shutdown.clear()
    with _nuke._state_lock:
        _nuke._violations.clear()
        _nuke._errors.clear()
        _nuke._tasks.clear()
    _nuke._ocio._config[0] = "nuke-default"
    root = _nuke._new_node("Root", None)
    root._knobs["name"]._value = ""
    root._knobs["first_frame"]._value = 1
    root._knobs["last_frame"]._value = 100
    _nuke._root = root  # type: ignore[assignment]
    _nuke._context[:] = [root]  # type: ignore[list-item]
    _nuke._this.clear()
    _nuke._in_callback = 0
    _nuke._messages.clear()
    _nuke._renders.clear()
    _nuke._render_cancel_after = None
    _nuke._menus.clear()
    _nuke._plugin_paths.clear()
    _nuke._views[:] = ["main"]
    _nuke._frame[0] = 1
    _nuke._last_hit[0] = None
    _nuke._executing[0] = False
    _nuke._render_details.clear()
    _nuke._modified[0] = False
    _nuke._undo_state["disabled"] = 0
    _nuke._undo_steps.clear()
    for registry in (_nuke.onCreates, _nuke.onScriptCloses, _nuke.beforeRenders, _nuke.afterRenders, _nuke.filenameFilters):
        registry.clear()
    _nuke.env.pop("hiero", None)
    _nuke._script_editor[0] = False
    _nuke._pending_knob_changed.clear()
    _nuke._in_knob_changed.clear()
    _nuke.rawArgs[:] = []
    _nuke._render_frame_hooks.clear()
    set_gui(True)


def save_script(path: str) -> None:
    """File > Save As: the script now has a path (root's ``name`` knob)."""
    _nuke._root._knobs["name"]._value = path
    _nuke._modified[0] = False


def close_script() -> None:
    """File > Close: the onScriptClose callbacks run, then the script is empty again."""
    _nuke._main_only("_fake.close_script")
    _nuke._fire(_nuke.onScriptCloses, _nuke._root)
    _nuke._delete_all_for_close()


def click_in_group(group: "_nuke.Group") -> None:
    """The user clicks in the node graph of ``group`` (what nuke.lastHitGroup() returns)."""
    _nuke._last_hit[0] = group


def set_views(names: List[str]) -> None:
    _nuke._views[:] = list(names)


def set_frame(frame: int) -> None:
    _nuke._frame[0] = frame


def set_proxy(on: bool) -> None:
    _nuke._root._knobs["proxy"]._value = bool(on)


def set_hiero(on: bool) -> None:
    """A Hiero / Nuke Studio timeline session (no node graph)."""
    _nuke.env["hiero"] = on


def undo_steps() -> List[str]:
    """Knob changes and creations recorded on the undo stack."""
    return list(_nuke._undo_steps)


def render_details() -> List[Dict[str, Any]]:
    """How each nuke.execute rendered: colorspace, channels, proxy, views, callbacks run."""
    return [dict(d) for d in _nuke._render_details]


def script_editor(call: Callable[[], Any]) -> Any:
    """Run ``call`` as the Script Editor does: on the main thread, with Nuke's event loop
    blocked until it returns (a ProgressTask updated meanwhile is a frozen GUI: a violation)."""
    _nuke._main_only("_fake.script_editor")
    if not _nuke.GUI:
        return call()
    _nuke._script_editor[0] = True
    try:
        return call()
    finally:
        _nuke._script_editor[0] = False
    _nuke._pending_knob_changed.clear()
    _nuke._in_knob_changed.clear()


def close_panel(panel: Any) -> None:
    """The user closes a PythonPanel: Nuke destroys it; the Python object then raises."""
    panel._destroyed = True


def shutdown() -> None:
    """Release every worker blocked in executeInMainThreadWithResult (test teardown)."""
    _nuke._shutdown.set()


def set_gui(gui: bool) -> None:
    """Interactive Nuke (True) or ``nuke -t`` (False)."""
    _nuke.GUI = gui
    _nuke.env["gui"] = gui


def set_frame_range(first: int, last: int) -> None:
    _nuke._root._knobs["first_frame"]._value = first
    _nuke._root._knobs["last_frame"]._value = last


def violations() -> List[str]:
    """Calls real Nuke would forbid (wrong thread, execute in a callback, dead queue)."""
    with _nuke._state_lock:
        return list(_nuke._violations)


def take_violations() -> List[str]:
    """The violations so far, cleared (for tests that provoke one on purpose)."""
    with _nuke._state_lock:
        out = list(_nuke._violations)
        _nuke._violations.clear()
    return out


def errors() -> List[str]:
    """Tracebacks of main-thread calls that raised (Nuke prints them; a test should not)."""
    with _nuke._state_lock:
        return list(_nuke._errors)


def take_errors() -> List[str]:
    """The errors so far, cleared (for tests that make a main-thread call raise on purpose)."""
    with _nuke._state_lock:
        out = list(_nuke._errors)
        _nuke._errors.clear()
    return out


def messages() -> List[str]:
    """Texts of every ``nuke.message`` so far."""
    return list(_nuke._messages)


def renders() -> List[Tuple[str, int, int]]:
    """``(write node full name, first, last)`` of every ``nuke.execute``."""
    return list(_nuke._renders)


def queued() -> int:
    with _nuke._queue_cond:
        return len(_nuke._queue)


def pump(max_calls: Optional[int] = None) -> int:
    """Run the calls queued for the main thread (as Nuke's event loop does); how many ran."""
    _nuke._main_only("_fake.pump")
    ran = 0
    while max_calls is None or ran < max_calls:
        with _nuke._queue_cond:
            if not _nuke._queue:
                break
            item = _nuke._queue.popleft()
        _nuke._run_queued(item)
        ran += 1
    return ran


def _stacks() -> str:
    """The stacks of the library's and the plugin's threads (``comfy-cluster...``): what a
    wait that timed out was waiting for (a hang seen once on a loaded CI machine is then
    readable from its log)."""
    import traceback

    frames = sys._current_frames()
    return "".join(
        f"--- thread {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident], limit=8))
        for t in threading.enumerate()
        if t.name.startswith("comfy-cluster") and t.ident in frames
    )


def pump_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    """Run the main loop until ``predicate()`` is true (then drain the queue once more).

    Raises AssertionError on timeout (a bound on a hang, generous for a loaded CI machine).
    ``predicate`` runs on the main thread, so it may read knobs.
    """
    _nuke._main_only("_fake.pump_until")
    deadline = time.monotonic() + timeout
    while True:
        pump()
        if predicate():
            pump()
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}\n{_stacks()}")
        with _nuke._queue_cond:
            if not _nuke._queue:
                _nuke._queue_cond.wait(0.01)


def press(node: "_nuke.Node", knob_name: str) -> None:
    """The user clicks the button ``knob_name`` of ``node``."""
    knob = node[knob_name]
    if not isinstance(knob, _nuke.Script_Knob):
        raise AssertionError(f"{knob_name} is not a button")
    knob.execute()


def user_set(node: "_nuke.Node", knob_name: str, value: Any) -> None:
    """The user edits a knob in the node's panel: the value is set, then ``knobChanged`` runs
    (by the setValue itself when the panel is open, as in Nuke)."""
    knob = node[knob_name]
    knob.setValue(value)
    code = node["knobChanged"].value()
    if code and not getattr(node, "_panel_open", False):
        _nuke._run_script(code, node, knob)


def panel_press(panel: Any, knob_name: str) -> None:
    """The user clicks a button of a ``nukescripts.PythonPanel``."""
    _panel_changed(panel, panel.knobs()[knob_name])


def panel_set(panel: Any, knob_name: str, value: Any) -> None:
    """The user edits a knob of a ``nukescripts.PythonPanel``."""
    knob = panel.knobs()[knob_name]
    knob.setValue(value)
    _panel_changed(panel, knob)


def _panel_changed(panel: Any, knob: "_nuke.Knob") -> None:
    _nuke._main_only("_fake.panel event")
    _nuke._in_callback += 1
    try:
        if isinstance(knob, _nuke.Script_Knob) and knob.command():
            exec(compile(knob.command(), "<panel button>", "exec"), _nuke._script_globals())
        panel.knobChanged(knob)
    finally:
        _nuke._in_callback -= 1


def progress_tasks() -> List["_nuke.ProgressTask"]:
    """The ProgressTasks still alive (still shown in Nuke), oldest first."""
    return list(_nuke._iter_tasks())


def cancel_progress(task: Optional["_nuke.ProgressTask"] = None) -> None:
    """The user clicks Cancel on ``task`` (default: the newest live task)."""
    if task is None:
        tasks = progress_tasks()
        if not tasks:
            raise AssertionError("no ProgressTask is shown")
        task = tasks[-1]
    task._cancelled = True


def cancel_render_after(frames: Optional[int]) -> None:
    """The user cancels Nuke's own render progress after ``frames`` frames (None: never)."""
    _nuke._render_cancel_after = frames


def quit() -> None:
    """Nuke quits (File > Quit, ``nuke.scriptExit()``): the script's onScriptClose callbacks run
    (Foundry, Python Developers Guide, "Callbacks": onScriptClose runs "when a script is
    closed", and quitting closes it), then the event loop stops for good: nothing queued runs
    any more, and a worker waiting in ``executeInMainThreadWithResult`` gets ``None``. Python's
    ``atexit`` handlers are *not* run: whether Nuke runs them on its way out is not documented,
    so a plugin must not rely on them (the worse case is modelled)."""
    _nuke._main_only("_fake.quit")
    _nuke._fire(_nuke.onScriptCloses, _nuke._root)
    with _nuke._queue_cond:
        _nuke._queue.clear()
    _nuke._shutdown.set()


def set_ocio_config(name: str) -> None:
    """The script's OCIO config: ``nuke-default``, ``aces_1.2`` (Nuke 14) or ``aces_studio_2.1``
    (Nuke 16); every colorspace knob lists that config's spaces and roles from now on."""
    _nuke._ocio._set_config(name)


def on_render_frame(hook: Optional[Callable[[str, int], None]]) -> None:
    """Call ``hook(write node full name, frame)`` on the main thread after each frame any
    ``nuke.execute`` renders, inside the render (None: no hook). The artist's F7 render, held
    at a frame while the test checks what the plugin does meanwhile."""
    _nuke._render_frame_hooks[:] = [hook] if hook is not None else []


def read_frame(read: "_nuke.Node", frame: int, view: str = "") -> Tuple[str, str]:
    """What the artist sees of Read ``read`` at ``frame`` in ``view`` (default: the main view;
    see ``nuke._render._read_frame``)."""
    from nuke._render import _read_frame

    return _read_frame(read, frame, view)


def strip_frame_range(args: List[str]) -> List[str]:
    """What ``nuke -t script.py ARGS`` leaves in the script's ``sys.argv[1:]``.

    Foundry, "Using the Command-line" (Python Developers Guide): "NUKE passes the arguments
    after -t to the Python interpreter. The only exception to this is if the last argument is a
    number or frame range [...] the 1,20 is stripped from sys.args and the frame range is
    available in nuke.tcl('frames all')." One trailing argument is stripped.
    """
    if args and _FRAME_RANGE.match(args[-1]):
        return list(args[:-1])
    return list(args)


def run_nuke_t(script: str, args: List[str], executable: str = "Nuke15.1") -> int:
    """``nuke -t script ARGS`` in this process: no GUI, ``nuke.rawArgs`` holding every argument,
    ``sys.argv`` as Nuke leaves it (:func:`strip_frame_range`), the script run as ``__main__``.
    Returns the exit status (``sys.exit``'s code; 0 when the script ends normally; 1 on an
    uncaught exception, which Nuke prints)."""
    _nuke._main_only("_fake.run_nuke_t")
    set_gui(False)
    saved_argv = sys.argv
    _nuke.rawArgs[:] = [executable, "-t", script] + list(args)
    sys.argv = [script] + strip_frame_range(list(args))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved_argv
    return 0


def current_thread_is_main() -> bool:
    return threading.current_thread() is _nuke._main_thread
