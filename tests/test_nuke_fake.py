"""The fake ``nuke`` is strict where Nuke is: these tests keep it so.

A fake that accepted everything would let the plugin pass tests and fail in Nuke: wrong
thread, a name Nuke lacks, a knob value Nuke refuses, a render inside a callback.
"""

from __future__ import annotations

import threading

import pytest
from nuke_fake.support import fake_nuke  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(30)


def _in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name="worker")
    t.start()
    t.join(5)
    return box


def test_unknown_names_raise(fake_nuke):
    import nuke

    with pytest.raises(AttributeError, match="executeInWorkerThread"):
        nuke.executeInWorkerThread  # noqa: B018
    with pytest.raises(AttributeError):
        nuke.Int_Knob("n").setValues  # noqa: B018
    node = nuke.nodes.NoOp()
    with pytest.raises(NameError, match="knob nope does not exist"):
        node["nope"]
    assert node.knob("nope") is None
    with pytest.raises(RuntimeError, match="unknown command"):
        nuke.nodes.NotANode()


@pytest.mark.parametrize(
    "call",
    [
        lambda nuke, node: node["label"].setValue("x"),
        lambda nuke, node: node["label"].value(),
        lambda nuke, node: node.setInput(0, None),
        lambda nuke, node: nuke.createNode("NoOp"),
        lambda nuke, node: nuke.nodes.Read(),
        lambda nuke, node: nuke.message("hi"),
        lambda nuke, node: nuke.toNode("NoOp1"),
        lambda nuke, node: nuke.allNodes(),
        lambda nuke, node: node.setXYpos(1, 2),
        lambda nuke, node: nuke.Int_Knob("k"),
    ],
)
def test_main_thread_calls_from_a_worker_fail_and_are_recorded(fake_nuke, call):
    import nuke

    node = nuke.nodes.NoOp()
    box = _in_thread(lambda: call(nuke, node))
    assert isinstance(box.get("error"), AssertionError)
    taken = fake_nuke.take_violations()
    assert len(taken) == 1 and "'worker'" in taken[0]


def test_a_swallowed_violation_is_still_recorded(fake_nuke):
    import nuke

    node = nuke.nodes.NoOp()

    def sloppy():
        try:
            node["label"].setValue("x")
        except Exception:
            pass

    _in_thread(sloppy)
    assert len(fake_nuke.take_violations()) == 1


def test_progress_task_may_be_updated_from_a_worker(fake_nuke):
    import nuke

    task = nuke.ProgressTask("t")
    box = _in_thread(lambda: (task.setMessage("m"), task.setProgress(50), task.isCancelled()))
    assert "error" not in box and task._history == [50]
    with pytest.raises(TypeError):
        task.setProgress(12.5)
    fake_nuke.cancel_progress(task)
    assert task.isCancelled()
    del task
    assert fake_nuke.progress_tasks() == []


def test_execute_in_main_thread_runs_when_the_main_loop_pumps(fake_nuke):
    import nuke

    seen = []
    box = _in_thread(lambda: nuke.executeInMainThread(lambda x: seen.append((x, threading.current_thread().name)), args=7))
    assert "error" not in box and seen == []  # queued, not run yet
    fake_nuke.pump()
    assert seen == [(7, "MainThread")]


def test_execute_in_main_thread_with_result(fake_nuke):
    import nuke

    result = {}

    def worker():
        result["ok"] = nuke.executeInMainThreadWithResult(lambda a, b: a + b, (2, 3))
        result["failed"] = nuke.executeInMainThreadWithResult(lambda: 1 / 0)

    t = threading.Thread(target=worker)
    t.start()
    fake_nuke.pump_until(lambda: not t.is_alive(), timeout=30)
    assert result == {"ok": 5, "failed": None}  # Nuke prints the error and returns None
    errors = fake_nuke.take_errors()
    assert len(errors) == 1 and "ZeroDivisionError" in errors[0]


def test_with_result_from_the_main_thread_or_without_gui_is_a_violation(fake_nuke):
    import nuke

    with pytest.raises(AssertionError, match="Nuke hangs"):
        nuke.executeInMainThreadWithResult(lambda: 1)
    fake_nuke.set_gui(False)
    box = _in_thread(lambda: nuke.executeInMainThread(lambda: 1))
    assert isinstance(box["error"], AssertionError)
    assert len(fake_nuke.take_violations()) == 2


def test_knob_values_behave_like_nukes(fake_nuke):
    import nuke

    i = nuke.Int_Knob("i")
    i.setValue(3.9)
    assert i.value() == 3 and isinstance(i.value(), int)
    with pytest.raises(TypeError):
        i.setValue("3")
    e = nuke.Enumeration_Knob("e", "e", ["a", "b", "c"])
    assert e.value() == "a"
    e.setValue("c")
    assert e.value() == "c" and e.getValue() == 2.0
    e.setValue(1)
    assert e.value() == "b"
    with pytest.raises(ValueError):
        e.setValue("z")
    with pytest.raises(ValueError):
        e.setValue(5)
    s = nuke.String_Knob("s")
    with pytest.raises(TypeError):
        s.setValue(5)
    b = nuke.Boolean_Knob("b")
    b.setValue(1)
    assert b.value() is True
    read = nuke.nodes.Read()
    read["file"].fromUserText("/x/img_####.png 1001-1010")
    assert read["file"].value() == "/x/img_####.png"
    assert (read["first"].value(), read["last"].value(), read["origlast"].value()) == (1001, 1010, 1010)


def test_deleted_nodes_raise_like_nuke(fake_nuke):
    import nuke

    node = nuke.nodes.NoOp()
    knob = node["label"]
    nuke.delete(node)
    with pytest.raises(ValueError, match="not attached"):
        node.name()
    with pytest.raises(ValueError, match="not attached"):
        knob.setValue("x")


def test_render_inside_a_knob_callback_fails_like_nuke(fake_nuke, tmp_path):
    import nuke

    source = nuke.nodes.Constant()
    write = nuke.nodes.Write(file=str(tmp_path / "a.####.png"))
    write.setInput(0, source)
    group = nuke.nodes.Group()
    group.addKnob(nuke.PyScript_Knob("go", "go", f"nuke.execute(nuke.toNode('{write.name()}'), 1, 2)"))
    with pytest.raises(AssertionError, match="already executing"):
        fake_nuke.press(group, "go")
    assert len(fake_nuke.take_violations()) == 1
    nuke.execute(write, 1, 2)  # outside a callback it renders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.0001.png", "a.0002.png"]
    assert (tmp_path / "a.0001.png").read_bytes().startswith(b"\x89PNG")


def test_render_needs_an_input_and_an_existing_folder(fake_nuke, tmp_path):
    import nuke

    write = nuke.nodes.Write(file=str(tmp_path / "sub" / "a.%04d.png"))
    with pytest.raises(RuntimeError, match="nothing is connected"):
        nuke.execute(write, 1, 1)
    write.setInput(0, nuke.nodes.Constant())
    with pytest.raises(RuntimeError, match="No such file"):
        nuke.execute(write, 1, 1)
    write["create_directories"].setValue(True)
    nuke.execute(write, 1, 1)
    assert (tmp_path / "sub" / "a.0001.png").is_file()


def test_groups_and_their_inputs(fake_nuke, tmp_path):
    import nuke

    group = nuke.nodes.Group()
    with group:
        inp = nuke.nodes.Input()
        write = nuke.nodes.Write(file=str(tmp_path / "g.####.png"))
        write.setInput(0, inp)
    assert nuke.toNode(f"{group.name()}.{write.name()}") is not None
    assert write.fullName() == f"{group.name()}.Write1"
    assert nuke.allNodes("Write") == [] and nuke.allNodes("Write", group=group) == [write]
    with pytest.raises(RuntimeError, match="nothing is connected"):
        nuke.execute(write, 1, 1)  # the group's input is not connected
    group.setInput(0, nuke.nodes.Constant())
    nuke.execute(write, 1, 1)
    assert (tmp_path / "g.0001.png").is_file()


def test_a_script_editor_call_that_blocks_while_showing_progress_is_a_frozen_gui(fake_nuke):
    import nuke

    def blocking_run():
        task = nuke.ProgressTask("a blocking run")
        task.setProgress(50)  # never redrawn: the event loop waits for this call to return

    with pytest.raises(AssertionError, match="GUI is frozen"):
        fake_nuke.script_editor(blocking_run)
    assert len(fake_nuke.take_violations()) == 1
    fake_nuke.set_gui(False)  # nuke -t: no GUI to freeze
    fake_nuke.script_editor(blocking_run)


def test_set_value_fires_knob_changed_when_the_panel_is_open(fake_nuke):
    import nuke

    seen = []
    nuke.seen = seen  # type: ignore[attr-defined]  # reached from the knob script below
    try:
        node = nuke.nodes.Group()
        node.addKnob(nuke.Int_Knob("a", "a"))
        node["knobChanged"].setValue("nuke.seen.append((nuke.thisKnob().name(), nuke.thisKnob().value()))")
        node["a"].setValue(1)  # panel closed: a Python change runs nothing
        assert seen == []
        node.showControlPanel()
        node["a"].setValue(2)  # panel open: knobChanged runs after the value is stored
        assert seen == [("a", 2)]
    finally:
        del nuke.seen  # type: ignore[attr-defined]


def test_a_reopened_script_runs_the_nodes_oncreate_script_kept_as_text(fake_nuke, tmp_path):
    import nuke

    node = nuke.nodes.Group()
    node["onCreate"].setValue("nuke.thisNode()['label'].setValue('loaded')")
    node.addKnob(nuke.String_Knob("hidden_thing", "hidden"))
    node["hidden_thing"].setValue("kept")
    node["hidden_thing"].setFlag(nuke.INVISIBLE)
    path = str(tmp_path / "a.nk")
    name = node.name()
    nuke.scriptSave(path)
    nuke.scriptOpen(path)
    with pytest.raises(ValueError):
        node.name()  # the closed script's nodes are gone
    loaded = nuke.toNode(name)
    assert loaded["label"].value() == "loaded"
    assert loaded["hidden_thing"].value() == "kept" and not loaded["hidden_thing"].visible()
