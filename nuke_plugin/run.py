"""Running a "ComfyUI Cluster Run" node on the cluster: Execute, Cancel, and ``submit``.

* :func:`execute` is the Execute button. It reads and checks the knobs on the main thread,
  then returns at once: a worker thread does the rest, so Nuke stays responsive.
* :func:`submit` is the same run for the Script Editor and ``nuke -t``: it blocks until the
  frames are done and returns the result files (or raises :class:`RunError`). Without a GUI
  its progress goes to the terminal.
* :func:`cancel` is the Cancel button (the ProgressTask's cancel does the same).

A run: the node's input is rendered to PNG files for the frame range (a temporary Write node,
``nuke.execute`` on the main thread: a render cannot start inside a knob callback, which is
why even that step is asked for from the worker). Each frame becomes one workflow
(:func:`comfy_cluster.frame_workflows`, the frame's file going to the chosen LoadImage node)
and the frames go to the cluster as one batch (``pool.map_async``): the pool picks a server
per frame, uploads the image, posts the prompt and follows it on that server's websocket. The
worker polls the batch every 0.1 s for the progress bar and for Cancel. When it ends, each
frame's image is downloaded (or, on shared storage, taken in place) and renamed into a
``<node>_####.<ext>`` sequence, and a Read node next to the node reads it.

Threads: every ``nuke`` call of the worker goes through :mod:`nuke_plugin.mainthread`,
except ``ProgressTask`` updates, which Nuke allows from any thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import nuke

from comfy_cluster import (
    STRATEGIES,
    Batch,
    ComfyClusterError,
    JobCancelled,
    JobFailed,
    ServerError,
    ServerPool,
    WorkflowError,
    frame_workflows,
    load_workflow,
)
from comfy_cluster.workflow import parse_node_input

from . import mainthread
from . import node as node_mod

__all__ = [
    "RunError",
    "RunCancelled",
    "Settings",
    "execute",
    "submit",
    "cancel",
    "is_running",
    "current",
    "read_settings",
    "default_strategy",
    "set_default_strategy",
    "describe_error",
    "pool_options",
]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
#: Extra keyword arguments for every run's ServerPool (for example ``{"server_lost_after": 5.0}``
#: to move frames off an unreachable server sooner); set it from a studio's menu.py.
pool_options: Dict[str, Any] = {}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr", ".bmp", ".gif")
_INPUTS_DIR = ".comfy_cluster_inputs"
_DOWNLOAD_DIR = ".comfy_cluster_download"


class RunError(ComfyClusterError):
    """A run could not start or some frames failed; ``str()`` is what the user is shown.

    ``errors`` maps frame numbers to the library's errors; ``paths`` holds the frames that
    did succeed (the Read node reads them).
    """

    def __init__(self, message: str, *, errors: Optional[Mapping[int, BaseException]] = None, paths: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: Dict[int, BaseException] = dict(errors or {})
        self.paths: List[str] = list(paths)


class RunCancelled(JobCancelled):
    """The user cancelled the run (Cancel button, the progress bar's cancel, Ctrl+C)."""


# --- the strategy chosen in the servers panel ---------------------------------------------------

_default_strategy: Optional[str] = None


def set_default_strategy(name: Optional[str]) -> None:
    """The strategy for nodes whose ``strategy`` knob says ``default`` (None: the environment)."""
    global _default_strategy
    if name is not None and name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})")
    _default_strategy = name


def default_strategy() -> Optional[str]:
    """The servers panel's choice, or None (then ``NUKE_COMFYUI_STRATEGY`` or least_loaded)."""
    return _default_strategy


# --- settings read from the knobs (main thread) -------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything a run needs from the node, read once on the main thread."""

    node_name: str
    full_name: str
    workflow_path: str
    workflow: Dict[str, Any] = field(repr=False)
    load_image_node: Optional[str]
    frame_input: Optional[str]
    first: int
    last: int
    strategy: Optional[str]
    output_dir: str

    @property
    def frames(self) -> List[int]:
        return list(range(self.first, self.last + 1))

    @property
    def needs_render(self) -> bool:
        return self.load_image_node is not None


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path.strip())))


def read_settings(node: nuke.Node) -> Settings:
    """Read and check the knobs of ``node`` (main thread); raises :class:`RunError` with a
    message meant for the user."""
    if not node_mod.is_run_node(node):
        raise RunError(f"{node.name()} is not a {node_mod.NODE_LABEL} node")
    name = node.name()
    raw_path = node["workflow"].value().strip()
    if not raw_path:
        raise RunError(f"{name}: choose a workflow file (in ComfyUI: Workflow > Export (API)).")
    workflow_path = _expand(raw_path)
    try:
        workflow = load_workflow(workflow_path)
    except ComfyClusterError as exc:
        raise RunError(f"{name}: {exc}") from None

    choice = node_mod.parse_load_image_choice(str(node["load_image_node"].value()))
    if choice is not None:
        spec = workflow.get(choice)
        if not isinstance(spec, dict):
            raise RunError(f"{name}: the workflow has no node {choice} for the input; pick the LoadImage node again.")
        if spec.get("class_type") != "LoadImage":
            raise RunError(f"{name}: node {choice} of the workflow is a {spec.get('class_type')}, not a LoadImage.")
        if node.input(0) is None:
            raise RunError(f"{name}: connect an input, or set 'input goes to' to {node_mod.NONE_CHOICE}.")

    frame_input = node["frame_input"].value().strip() or None
    if frame_input is not None:
        try:
            target, _ = parse_node_input(frame_input)
        except ComfyClusterError as exc:
            raise RunError(f"{name}: frame number to: {exc}") from None
        if target not in workflow:
            raise RunError(f"{name}: frame number to: the workflow has no node {target}.")

    first_knob, last_knob = node["first"], node["last"]
    first, last = int(first_knob.value()), int(last_knob.value())
    if last < first:
        raise RunError(f"{name}: the frame range {first}-{last} is empty.")

    strategy = str(node["strategy"].value())
    chosen = default_strategy() if strategy == node_mod.DEFAULT_STRATEGY else strategy

    raw_out = node["output_dir"].value().strip()
    output_dir = _expand(raw_out) if raw_out else os.path.join(tempfile.gettempdir(), "comfy_cluster", name)
    return Settings(
        node_name=name,
        full_name=node.fullName(),
        workflow_path=workflow_path,
        workflow=workflow,
        load_image_node=choice,
        frame_input=frame_input,
        first=first,
        last=last,
        strategy=chosen,
        output_dir=output_dir,
    )


# --- the main-thread steps ----------------------------------------------------------------------


def _render_input(node: nuke.Node, pattern: str, first: int, last: int) -> None:
    """Render the node's input to ``pattern`` (``...####.png``) with a temporary Write node."""
    assert isinstance(node, nuke.Group)
    with node:
        source = next((n for n in nuke.allNodes("Input") if int(n["number"].value()) == 0), None)
        if source is None:
            raise RunError(f"{node.name()}: its Input node is missing")
        write = nuke.nodes.Write()
        try:
            write.setInput(0, source)
            write["file"].setValue(pattern)
            write["file_type"].setValue("png")
            write["channels"].setValue("rgba")
            nuke.execute(write, first, last)
        finally:
            nuke.delete(write)


def _update_read(node: nuke.Node, pattern: str, first: int, last: int) -> str:
    return node_mod.update_read_node(node, pattern, first, last).name()


def _new_progress_task(title: str) -> nuke.ProgressTask:
    return nuke.ProgressTask(title)


# --- runs ---------------------------------------------------------------------------------------

_runs: Dict[str, "_Run"] = {}
_runs_lock = threading.Lock()


class _Run:
    """One run of one node. ``run()`` works on any thread; nuke calls go through mainthread."""

    def __init__(self, node: nuke.Node, settings: Settings, *, interactive: bool, dialogs: bool) -> None:
        self.node = node
        self.settings = settings
        self.interactive = interactive  # a ProgressTask (GUI) rather than terminal output
        self.dialogs = dialogs  # report a failure with nuke.message (the button) or only raise
        self.cancel_requested = threading.Event()
        self.finished = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.paths: List[str] = []
        self.error: Optional[BaseException] = None
        self._task: Optional[nuke.ProgressTask] = None
        self._last_text: Optional[str] = None
        self._last_percent = -1

    # -- control --------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread_main, name=f"comfy-cluster-nuke-{self.settings.node_name}", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self.cancel_requested.set()

    def _cancelled(self) -> bool:
        if self.cancel_requested.is_set():
            return True
        task = self._task
        if task is not None and task.isCancelled():
            self.cancel_requested.set()
            return True
        return False

    def _thread_main(self) -> None:
        try:
            self.run()
        except ComfyClusterError:
            pass  # reported by run()
        except Exception:
            log.exception("run of %s failed", self.settings.node_name)

    # -- progress -------------------------------------------------------------------------------

    def _show(self, text: str, percent: Optional[int] = None) -> None:
        """Progress to the ProgressTask (any thread may update it) or the terminal, and the
        status knob (main thread)."""
        if text == self._last_text and (percent is None or percent == self._last_percent):
            return
        self._last_text = text
        task = self._task
        if task is not None:
            task.setMessage(text)
            if percent is not None:
                task.setProgress(int(percent))
        if percent is not None:
            self._last_percent = percent
        if not self.interactive:
            print(f"[{self.settings.node_name}] {text}", flush=True)
        mainthread.post(node_mod.set_status, self.node, text)

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> List[str]:
        """Render, run every frame on the cluster, collect the files, make the Read node.

        Returns the frame files; raises :class:`RunError` (failures) or :class:`RunCancelled`.
        """
        s = self.settings
        # Per node: another node writing to the same folder may be running at the same time.
        inputs_dir = os.path.join(s.output_dir, _INPUTS_DIR, s.node_name)
        try:
            if self.interactive:
                self._task = mainthread.call(_new_progress_task, f"{node_mod.NODE_LABEL}: {s.node_name}")
            self._show(f"starting {len(s.frames)} frame(s)", 0)
            per_frame_inputs = self._render(inputs_dir)
            if self._cancelled():
                raise RunCancelled(f"{s.node_name}: cancelled before any frame was sent")
            paths = self._run_batch(per_frame_inputs)
            self.paths = paths
            return paths
        except BaseException as exc:
            self.error = exc
            self._report(exc)
            raise
        finally:
            _remove_tree(inputs_dir)
            # Releasing the last reference is what removes a ProgressTask from Nuke's screen.
            self._task = None
            with _runs_lock:
                if _runs.get(s.full_name) is self:
                    del _runs[s.full_name]
            self.finished.set()

    def _render(self, inputs_dir: str) -> Dict[int, str]:
        """Render the node's input for every frame; frame -> file. Empty when not needed."""
        s = self.settings
        if not s.needs_render:
            return {}
        os.makedirs(inputs_dir, exist_ok=True)
        pattern = os.path.join(inputs_dir, f"{s.node_name}_input.####.png").replace("\\", "/")
        self._show(f"rendering the input, frames {s.first}-{s.last}", 0)
        try:
            mainthread.call(_render_input, self.node, pattern, s.first, s.last)
        except RunError:
            raise
        except Exception as exc:
            if "cancel" in str(exc).lower():
                raise RunCancelled(f"{s.node_name}: the render of the input was cancelled") from None
            raise RunError(f"{s.node_name}: rendering the input failed: {exc}") from exc
        files = {f: os.path.join(inputs_dir, f"{s.node_name}_input.{f:04d}.png") for f in s.frames}
        missing = [f for f, p in files.items() if not os.path.isfile(p)]
        if missing:
            raise RunError(f"{s.node_name}: the render of the input wrote no file for frame(s) {_ranges(missing)}")
        return files

    def _run_batch(self, per_frame_inputs: Mapping[int, str]) -> List[str]:
        s = self.settings
        frames = s.frames
        try:
            workflows = frame_workflows(s.workflow, frames, s.frame_input)
            options = dict(pool_options)
            if s.strategy:
                options["strategy"] = s.strategy
            pool = ServerPool.from_env(**options)
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        try:
            inputs: Optional[List[Dict[str, str]]] = None
            if s.load_image_node is not None:
                inputs = [{s.load_image_node: per_frame_inputs[f]} for f in frames]
            try:
                batch = pool.map_async(workflows, inputs=inputs, retries=2)
            except ComfyClusterError as exc:
                raise RunError(f"{s.node_name}: {exc}") from exc
            stopped_by = self._follow(batch)
            return self._collect(batch, stopped_by)
        finally:
            pool.close()

    def _follow(self, batch: Batch) -> Optional[str]:
        """Poll the batch until every job ended; cancel it on request or on a refused workflow.

        Returns why the batch was stopped early (None when it ran to the end).
        """
        stopped_by: Optional[str] = None
        seen_failed = 0
        frames = self.settings.frames
        while True:
            done = batch.wait(POLL_SECONDS)
            ended, failed, total = batch.counts()
            if stopped_by is None and self._cancelled():
                stopped_by = "cancel"
                batch.cancel()
            if stopped_by is None and failed > seen_failed:
                seen_failed = failed
                # ComfyUI refusing the workflow for one frame refuses it for all of them.
                if any(job.done and isinstance(job.exception(), WorkflowError) for job in list(batch.jobs)):
                    stopped_by = "refused"
                    batch.cancel()
            working = batch.servers_working()
            text = f"{ended}/{total} frames done"
            if failed:
                text += f", {failed} failed"
            if stopped_by == "cancel":
                text += " - cancelling"
            elif working:
                text += " - working: " + ", ".join(sorted(working))
            self._show(text, int(100 * ended / total) if total else 100)
            if done:
                break
        log.info("%s: %d frame(s) ended (%s)", self.settings.node_name, len(frames), stopped_by or "complete")
        return stopped_by

    def _collect(self, batch: Batch, stopped_by: Optional[str]) -> List[str]:
        """Download each frame's image into the output sequence; make or update the Read."""
        s = self.settings
        frames = s.frames
        errors: Dict[int, BaseException] = {}
        cancelled: List[int] = []
        results: Dict[int, Tuple[str, str]] = {}  # frame -> (file, extension)
        for job, frame in zip(batch.jobs, frames):
            err = job.exception()
            if isinstance(err, JobCancelled):
                cancelled.append(frame)
            elif err is not None:
                errors[frame] = err
            else:
                results[frame] = ("", "")
        if stopped_by == "cancel":
            raise RunCancelled(f"{s.node_name}: cancelled ({len(results)} of {len(frames)} frames were done)")

        os.makedirs(s.output_dir, exist_ok=True)
        download_root = os.path.join(s.output_dir, _DOWNLOAD_DIR, s.node_name)
        paths: Dict[int, str] = {}
        try:
            for i, (job, frame) in enumerate(zip(batch.jobs, frames)):
                if frame not in results:
                    continue
                self._show(f"downloading frame {frame} ({i + 1}/{len(frames)})")
                try:
                    paths[frame] = self._take_output(job, frame, os.path.join(download_root, str(frame)))
                except (ComfyClusterError, OSError) as exc:
                    errors[frame] = exc
        finally:
            _remove_tree(download_root)

        done_frames = sorted(paths)
        read_name = ""
        if done_frames:
            ext = os.path.splitext(paths[done_frames[0]])[1]
            pattern = os.path.join(s.output_dir, f"{s.node_name}_####{ext}").replace("\\", "/")
            try:
                read_name = mainthread.call(_update_read, self.node, pattern, done_frames[0], done_frames[-1])
            except ValueError:  # Nuke's answer for a node deleted while the frames ran
                raise RunError(
                    f"{s.node_name} was deleted while it ran; the frames are in {s.output_dir}",
                    errors=errors,
                    paths=[paths[f] for f in done_frames],
                ) from None
        ordered = [paths[f] for f in done_frames]
        if errors:
            raise RunError(_failure_text(s.node_name, frames, errors, cancelled), errors=errors, paths=ordered)
        self._show(f"done: {len(done_frames)} frame(s) in {s.output_dir} - Read node {read_name}", 100)
        return ordered

    def _take_output(self, job: Any, frame: int, dest_dir: str) -> str:
        """The frame's image as ``<output_dir>/<node>_<frame>.<ext>``."""
        result = job.result()
        files = result.files
        local = job.download(dest_dir)
        if len(local) != len(files):
            raise ComfyClusterError(f"frame {frame}: expected {len(files)} file(s), got {len(local)}")
        chosen = _pick_image(files)
        if chosen is None:
            raise ComfyClusterError(f"frame {frame}: the workflow produced no image (add a SaveImage node)")
        source = local[chosen]
        ext = os.path.splitext(source)[1].lower() or ".png"
        target = os.path.join(self.settings.output_dir, f"{self.settings.node_name}_{frame:04d}{ext}")
        if _inside(source, dest_dir):
            os.replace(source, target)
        else:
            # A mapped path on shared storage: leave ComfyUI's file where it is, link or copy.
            if os.path.lexists(target):
                os.remove(target)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        return target

    # -- reporting --------------------------------------------------------------------------------

    def _report(self, exc: BaseException) -> None:
        name = self.settings.node_name
        if isinstance(exc, RunCancelled):
            self._show(f"cancelled - {exc}".replace(f"{name}: ", ""))
            return
        if isinstance(exc, ComfyClusterError):
            text = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            self._show("interrupted")
            return
        else:
            log.exception("run of %s failed", name)
            text = f"{name}: unexpected error: {exc!r}"
        first_line = text.splitlines()[0] if text else "failed"
        self._show(f"failed - {first_line.replace(f'{name}: ', '')}")
        if self.dialogs:
            mainthread.post(nuke.message, text)


def _remove_tree(path: str) -> None:
    """Remove ``path`` and its parent if that is left empty (best effort)."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:  # not empty (another node's run) or already gone
        pass


def _pick_image(files: Sequence[Any]) -> Optional[int]:
    """Index of the frame's image: the first saved ("output") image, else the first image."""
    images = [i for i, f in enumerate(files) if os.path.splitext(f.filename)[1].lower() in IMAGE_EXTENSIONS]
    saved = [i for i in images if files[i].type == "output"]
    if saved:
        return saved[0]
    return images[0] if images else None


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # different drives on Windows
        return False


def _ranges(frames: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out: List[str] = []
    ordered = sorted(frames)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def describe_error(err: BaseException) -> str:
    """ComfyUI's own words for an error: node, type, input and message for a refused workflow;
    node, exception and message for a failure while running."""
    if isinstance(err, WorkflowError):
        where = f" by {err.server}" if err.server else ""
        if not err.node_errors:
            return f"ComfyUI refused the workflow{where}: {err}"
        lines = [f"ComfyUI refused the workflow{where}:"]
        for ne in err.node_errors:
            spot = f"node {ne.node_id} ({ne.class_type})"
            if ne.input:
                spot += f", input '{ne.input}'"
            lines.append(f"  {spot}: {ne.message}")
        return "\n".join(lines)
    if isinstance(err, JobFailed):
        where = f" on {err.server}" if err.server else ""
        if err.node_id is None and not err.exception_type:
            return str(err)
        head = f"ComfyUI failed{where} in node {err.node_id} ({err.node_type}):"
        body = f"{err.exception_type}: {err.exception_message}" if err.exception_type else err.exception_message
        return f"{head}\n  {body}"
    if isinstance(err, ServerError) and err.attempts:
        return "the servers failed:\n" + "\n".join(f"  {name}: {why}" for name, why in err.attempts)
    return str(err)


def _failure_text(name: str, frames: Sequence[int], errors: Mapping[int, BaseException], cancelled: Sequence[int]) -> str:
    parts = [f"{name}: {len(errors)} of {len(frames)} frame(s) failed."]
    if cancelled:
        parts[0] += f" Frame(s) {_ranges(cancelled)} were not run."
    groups: Dict[str, List[int]] = {}
    for frame, err in sorted(errors.items()):
        groups.setdefault(describe_error(err), []).append(frame)
    for text, group in groups.items():
        parts.append(f"Frame(s) {_ranges(group)}:\n{text}")
    return "\n\n".join(parts)


# --- entry points -------------------------------------------------------------------------------


def _as_node(node: Union[nuke.Node, str]) -> nuke.Node:
    if isinstance(node, str):
        found = nuke.toNode(node)
        if found is None:
            raise RunError(f"no node named {node}")
        return found
    return node


def _register(node: nuke.Node, settings: Settings, *, interactive: bool, dialogs: bool) -> _Run:
    with _runs_lock:
        if settings.full_name in _runs:
            raise RunError(f"{settings.node_name} is already running; cancel it first.")
        run = _Run(node, settings, interactive=interactive, dialogs=dialogs)
        _runs[settings.full_name] = run
    return run


def execute(node: nuke.Node) -> Optional[_Run]:
    """The Execute button (main thread): check the knobs, then run in the background.

    Returns the run (None when it could not start; the user was told why). Without a GUI
    there is no event loop to wait on, so this runs like :func:`submit` and returns when done.
    """
    try:
        settings = read_settings(node)
        run = _register(node, settings, interactive=bool(nuke.GUI), dialogs=True)
    except RunError as exc:
        node_mod.set_status(node, f"not started - {exc}")
        nuke.message(str(exc))
        return None
    if not nuke.GUI:
        try:
            run.run()
        except ComfyClusterError:
            pass  # reported
        return run
    node_mod.set_status(node, "starting")
    run.start()
    return run


def submit(node: Union[nuke.Node, str]) -> List[str]:
    """Run ``node`` and wait (Script Editor, ``nuke -t``): returns the frame files in order.

    Raises :class:`RunError` (with ComfyUI's words) when frames failed, or
    :class:`RunCancelled`. With a GUI a ProgressTask shows the progress; without one it is
    printed to the terminal. Ctrl+C cancels every job on its server.
    """
    target = mainthread.call(_as_node, node)
    settings = mainthread.call(read_settings, target)
    run = _register(target, settings, interactive=bool(nuke.GUI), dialogs=False)
    try:
        return run.run()
    except KeyboardInterrupt:
        raise RunCancelled(f"{settings.node_name}: interrupted") from None


def cancel(node: nuke.Node) -> bool:
    """The Cancel button: cancel the node's run, every job where it is. False if none runs."""
    with _runs_lock:
        run = _runs.get(node.fullName())
    if run is None:
        node_mod.set_status(node, "nothing to cancel")
        return False
    run.cancel()
    node_mod.set_status(node, "cancelling")
    return True


def current(node: nuke.Node) -> Optional[_Run]:
    """The node's run in progress, if any (main thread)."""
    with _runs_lock:
        return _runs.get(node.fullName())


def is_running(node: nuke.Node) -> bool:
    return current(node) is not None


def _wait_all(timeout: float) -> bool:
    """Wait for every background run to end (for tests and shutdown); False on timeout."""
    deadline = time.monotonic() + timeout
    with _runs_lock:
        runs = list(_runs.values())
    for run in runs:
        if not run.finished.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True
