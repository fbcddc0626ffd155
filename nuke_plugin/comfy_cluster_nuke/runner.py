"""One run of one node on the cluster: render the inputs, run the frames, collect the results.

:class:`Run` works on any thread; every ``nuke`` call goes through :mod:`.mainthread` except
``ProgressTask`` updates, which Nuke allows from any thread. A run: a new version folder
(:mod:`.destinations`); the pool opened and the file format chosen (linear EXR where the
servers have LoadEXR/SaveEXR, else 8-bit PNG: :mod:`.exchange`); the used inputs rendered
(:mod:`.render`); one workflow per frame (the frame's files to their loader nodes, the parameter knobs' values of that frame,
the frame number to ``frame_input``) sent as one batch (``pool.map_async``); the batch polled
every 0.1 s for progress and Cancel; each frame's image moved into ``<node>_####.<ext>`` in the
version folder, and the ``result`` Read inside the node pointed at it. Failed frames are
recorded on the node (Re-run failed) and are Read errors in the result (never a placeholder
image); a frame whose input could not be rendered (a missing plate frame) fails alone.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import nuke

from comfy_cluster import Batch, ComfyClusterError, JobCancelled, OutputFile, ServerPool, WorkflowError, frame_workflows

from . import destinations, exchange, mainthread, params, render
from . import node as node_mod
from .report import failure_text, ranges
from .settings import RunError, Settings

__all__ = ["Run", "RunCancelled", "POLL_SECONDS", "STATUS_INTERVAL", "pool_options"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
STATUS_INTERVAL = 0.25  # the status knob is updated at most this often (the bar at every poll)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr", ".bmp", ".gif")
# Each run's working folders inside the version folder: ``.inputs-<random>``, ``.download-<random>``.
# Farm tasks of one job share the version folder; each removes only its own when it ends.
_INPUTS_DIR = ".inputs-"
_DOWNLOAD_DIR = ".download-"
_clock = time.monotonic  # the status throttle's clock (tests replace it)
#: Extra keyword arguments for every run's ServerPool (for example ``{"server_lost_after": 5.0}``);
#: set it from a studio's menu.py.
pool_options: Dict[str, Any] = {}


class RunCancelled(JobCancelled):
    """The user cancelled the run (Cancel button, the progress bar's cancel, Ctrl+C, script close)."""


def _new_progress_task(title: str) -> nuke.ProgressTask:
    return nuke.ProgressTask(title)


def _record(node: nuke.Node, version: str, failed: str) -> None:
    node_mod.quiet_set(node["last_version"], version)
    node_mod.quiet_set(node["failed_frames"], failed)


class Run:
    """One run of one node; the handle ``start``/``execute`` return (``wait``, ``cancel``, ``paths``)."""

    def __init__(self, node: nuke.Node, settings: Settings, *, interactive: bool, dialogs: bool, on_end: Any = None) -> None:
        self.node = node
        self.settings = settings
        self.interactive = interactive  # a ProgressTask (GUI) rather than terminal output
        self.dialogs = dialogs  # report a failure with nuke.message (the button) or only raise
        self.cancel_requested = threading.Event()
        self.finished = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.paths: List[str] = []
        self.error: Optional[BaseException] = None
        self.version_dir = ""
        self._on_end = on_end
        self._batch: Optional[Batch] = None
        self._task: Optional[nuke.ProgressTask] = None
        self._last_text: Optional[str] = None
        self._last_percent = -1
        self._last_status = 0.0
        self.sent_frames: Tuple[int, ...] = settings.frames  # less the frames whose input failed to render
        self._render_errors: Dict[int, BaseException] = {}
        self._format = render.FileFormat(exchange.PNG, settings.colorspace)
        self._expected: Dict[int, Tuple[Tuple[str, str], ...]] = {}  # frame -> SaveEXR files (subfolder, name)

    # -- control --------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a worker thread of its own (daemon: Nuke never waits for it to quit)."""
        self.thread = threading.Thread(target=self._thread_main, name=f"comfy-cluster-nuke-{self.settings.node_name}", daemon=True)
        self.thread.start()

    def cancel(self, *, now: bool = False) -> None:
        """Ask the run to stop; ``now`` also cancels the jobs from this thread (Nuke quitting,
        when the worker may be waiting for a main thread that no longer runs)."""
        self.cancel_requested.set()
        batch = self._batch
        if now and batch is not None:
            batch.cancel()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the run to end (never on Nuke's GUI main thread); True when it has."""
        return self.finished.wait(timeout)

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

    def _show(self, text: str, percent: Optional[int] = None, *, force: bool = False) -> None:
        """Progress to the ProgressTask or the terminal, and (throttled) to the status knob."""
        if text == self._last_text and (percent is None or percent == self._last_percent) and not force:
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
        now = _clock()
        if force or now - self._last_status >= STATUS_INTERVAL:
            self._last_status = now
            mainthread.post(node_mod.set_status, self.node, text)

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> List[str]:
        """Render, run every frame on the cluster, collect the files, point the Read at them.

        Returns the frame files; raises :class:`RunError` (failures) or :class:`RunCancelled`.
        """
        s = self.settings
        inputs_dir = ""
        try:
            if self.interactive:
                self._task = mainthread.call(_new_progress_task, f"{node_mod.NODE_LABEL}: {s.node_name}")
            try:
                if s.reuse_version:  # a re-run of failed frames, or a farm chunk of a given version
                    self.version_dir = os.path.join(s.output_base, s.reuse_version)
                    os.makedirs(self.version_dir, exist_ok=True)
                else:
                    self.version_dir = destinations.new_version(s.output_base)
            except OSError as exc:
                raise RunError(f"{s.node_name}: cannot create the output folder in {s.output_base}: {exc}") from None
            inputs_dir = _working_dir(self.version_dir, _INPUTS_DIR)
            self._show(f"starting {len(s.frames)} frame(s) into {self.version_dir}", 0, force=True)
            pool = self._open_pool()
            try:
                self._format = self._choose_format(pool)
                per_frame_inputs = self._render(inputs_dir)
                if self._cancelled():
                    raise RunCancelled(f"{s.node_name}: cancelled before any frame was sent")
                self.paths = self._run_batch(pool, per_frame_inputs)
            finally:
                pool.close()
            return self.paths
        except BaseException as exc:
            self.error = exc
            self._report(exc)
            raise
        finally:
            if inputs_dir:
                shutil.rmtree(inputs_dir, ignore_errors=True)
            self._task = None  # releasing the last reference removes the bar from Nuke's screen
            self._batch = None
            if self._on_end is not None:
                self._on_end(self)
            self.finished.set()

    def _render(self, inputs_dir: str) -> Dict[int, Dict[str, str]]:
        """Render the used inputs for every frame; frame -> {LoadImage id: file}."""
        s = self.settings
        if not s.needs_render:
            return {}
        os.makedirs(inputs_dir, exist_ok=True)
        stem = f"{s.node_name}_{s.uid}"
        ext = self._format.kind
        jobs = [(m, render.input_pattern(inputs_dir, stem, m.number, ext)) for m in s.inputs]
        self._show(f"rendering the input, frames {ranges(s.frames)}", 0, force=True)
        try:
            failed = render.render_inputs(self.node, jobs, s.frames, self._format)
        except RunError:
            raise
        except Exception as exc:
            if "cancel" in str(exc).lower():
                raise RunCancelled(f"{s.node_name}: the render of the input was cancelled") from None
            raise RunError(f"{s.node_name}: rendering the input failed: {exc}") from exc
        out: Dict[int, Dict[str, str]] = {}
        for frame in s.frames:
            files = {m.node_id: render.input_file(inputs_dir, stem, m.number, frame, ext) for m in s.inputs}
            if frame not in failed and not all(os.path.isfile(p) for p in files.values()):
                failed[frame] = "Nuke wrote no file"
            if frame in failed:
                # That frame fails alone, named; the others go on (a farm task then exits 1).
                self._render_errors[frame] = RunError(f"the input could not be rendered: {failed[frame]}")
            else:
                out[frame] = files
        self.sent_frames = tuple(f for f in s.frames if f in out)
        if not self.sent_frames:
            raise RunError(
                failure_text(s.node_name, s.frames, self._render_errors, []), errors=dict(self._render_errors)
            )
        return out

    def _workflows(self) -> List[Dict[str, Any]]:
        s = self.settings
        workflows = []
        for frame in self.sent_frames:
            wf = copy.deepcopy(s.workflow)
            params.apply(wf, s.params.get(frame, {}), skip=s.frame_input)
            workflows.append(wf)
        if s.frame_input:
            workflows = [frame_workflows(wf, [f], s.frame_input)[0] for wf, f in zip(workflows, self.sent_frames)]
        if self._format.kind == exchange.EXR:
            loaders = [m.node_id for m in s.inputs]
            converted = []
            for wf, frame in zip(workflows, self.sent_frames):
                # One output folder per job: SaveEXR names its files without telling (exchange).
                done = exchange.to_exr(wf, loaders, f"{s.uid}_{frame}_{uuid.uuid4().hex[:12]}")
                self._expected[frame] = done.outputs
                converted.append(done.workflow)
            workflows = converted
        return workflows

    def _open_pool(self) -> ServerPool:
        s = self.settings
        try:
            options = dict(pool_options)
            if s.strategy:
                options["strategy"] = s.strategy
            return ServerPool.from_env(**options)
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc

    def _choose_format(self, pool: ServerPool) -> render.FileFormat:
        """EXR when asked or possible (some server that can run the job has LoadEXR/SaveEXR:
        capability routing then sends the jobs there), else PNG; said on the node."""
        s = self.settings
        kind = exchange.PNG
        if s.pixels != exchange.PNG:
            probe = exchange.to_exr(s.workflow, [m.node_id for m in s.inputs], "probe").workflow
            try:
                able = pool.capabilities(probe)
            except ComfyClusterError as exc:
                raise RunError(f"{s.node_name}: {exc}") from exc
            if any(why is None for why in able.values()):
                kind = exchange.EXR
            elif s.pixels == exchange.EXR:
                why = "; ".join(f"{name}: {reason}" for name, reason in sorted(able.items())) or "no server online"
                raise RunError(f"{s.node_name}: no server can run the workflow with LoadEXR and SaveEXR "
                               f"(ComfyUI-HQ-Image-Save) - {why}. Set 'pixels' to auto or png.")
        note = exchange.EXR_NOTE if kind == exchange.EXR else exchange.PNG_NOTE
        mainthread.post(node_mod.set_pixels_note, self.node, note)
        self._show(note, force=True)
        return render.FileFormat(kind, s.colorspace, s.exr_datatype, s.mask_channel)

    def _run_batch(self, pool: ServerPool, per_frame_inputs: Mapping[int, Dict[str, str]]) -> List[str]:
        s = self.settings
        try:
            workflows = self._workflows()
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        inputs = [per_frame_inputs[f] for f in self.sent_frames] if per_frame_inputs else None
        try:
            batch = pool.map_async(workflows, inputs=inputs, retries=2)
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        self._batch = batch
        if self.cancel_requested.is_set():
            batch.cancel()  # a cancel that came while the batch was being created
        stopped_by = self._follow(batch)
        return self._collect(batch, stopped_by)

    def _follow(self, batch: Batch) -> Optional[str]:
        """Poll the batch until every job ended; cancel it on request or on a refused workflow."""
        stopped_by: Optional[str] = None
        seen_failed = 0
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
        return stopped_by

    def _collect(self, batch: Batch, stopped_by: Optional[str]) -> List[str]:
        """Move each frame's image into the version folder; point the Read at the sequence."""
        s = self.settings
        errors: Dict[int, BaseException] = dict(self._render_errors)
        cancelled: List[int] = []
        ok: List[Tuple[Any, int]] = []
        for job, frame in zip(batch.jobs, self.sent_frames):
            err = job.exception()
            if isinstance(err, JobCancelled):
                cancelled.append(frame)
            elif err is not None:
                errors[frame] = err
            else:
                ok.append((job, frame))
        if stopped_by == "cancel":
            raise RunCancelled(f"{s.node_name}: cancelled ({len(ok)} of {len(s.frames)} frames were done)")
        download_root = _working_dir(self.version_dir, _DOWNLOAD_DIR)
        paths: Dict[int, str] = {}
        try:
            for i, (job, frame) in enumerate(ok):
                self._show(f"downloading frame {frame} ({i + 1}/{len(ok)})")
                try:
                    paths[frame] = self._take_output(job, frame, os.path.join(download_root, str(frame)))
                except (ComfyClusterError, OSError) as exc:
                    errors[frame] = exc
        finally:
            shutil.rmtree(download_root, ignore_errors=True)
        failed = sorted(set(errors) | set(cancelled))
        done_frames = sorted(paths)
        read_name = ""
        try:
            mainthread.call(_record, self.node, self.version_dir, " ".join(map(str, failed)))
            if done_frames:
                ext = os.path.splitext(paths[done_frames[0]])[1]
                pattern = os.path.join(self.version_dir, f"{s.node_name}_####{ext}").replace("\\", "/")
                # The node's frames and those already in the version (a re-run completes it):
                # failed frames inside the range are Read errors (a render through the node stops on them).
                present = set(_frames_present(self.version_dir, s.node_name, ext)) | set(s.frames)
                first, last = min(present), max(present)
                raw = self._format.kind == exchange.EXR
                read_name = mainthread.call(_update_read, self.node, pattern, first, last, s.colorspace, raw)
        except ValueError:  # Nuke's answer for a node deleted while the frames ran
            raise RunError(
                f"{s.node_name} was deleted while it ran; the frames are in {self.version_dir}",
                errors=errors,
                paths=[paths[f] for f in done_frames],
            ) from None
        ordered = [paths[f] for f in done_frames]
        if errors:
            raise RunError(failure_text(s.node_name, s.frames, errors, cancelled), errors=errors, paths=ordered)
        self._show(f"done: {len(done_frames)} frame(s) in {self.version_dir} - {read_name}", 100, force=True)
        return ordered

    def _take_output(self, job: Any, frame: int, dest_dir: str) -> str:
        """The frame's image as ``<version folder>/<node>_<frame>.<ext>``."""
        expected = self._expected.get(frame)
        if expected:  # SaveEXR reports nothing: its first file, named by us (exchange)
            files = [OutputFile(expected[0][1], expected[0][0], "output")]
            local = job.download(dest_dir, files=files)
        else:
            files = job.result().files
            local = job.download(dest_dir)
        if len(local) != len(files):
            raise ComfyClusterError(f"frame {frame}: expected {len(files)} file(s), got {len(local)}")
        chosen = _pick_image(files)
        if chosen is None:
            raise ComfyClusterError(f"frame {frame}: the workflow produced no image (add a SaveImage node)")
        source = local[chosen]
        ext = os.path.splitext(source)[1].lower() or ".png"
        target = os.path.join(self.version_dir, f"{self.settings.node_name}_{frame:04d}{ext}")
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

    def _report(self, exc: BaseException) -> None:
        name = self.settings.node_name
        if isinstance(exc, RunCancelled):
            self._show(f"cancelled - {exc}".replace(f"{name}: ", ""), force=True)
            return
        if isinstance(exc, KeyboardInterrupt):
            self._show("interrupted", force=True)
            return
        if isinstance(exc, ComfyClusterError):
            text = str(exc)
        else:
            log.exception("run of %s failed", name)
            text = f"{name}: unexpected error: {exc!r}"
        first_line = text.splitlines()[0] if text else "failed"
        self._show(f"failed - {first_line.replace(f'{name}: ', '')}", force=True)
        if self.dialogs:
            mainthread.post(nuke.message, text)


def _working_dir(version_dir: str, prefix: str) -> str:
    """A new folder of this run's own in the version folder (never another task's)."""
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=version_dir)
    except OSError as exc:
        raise RunError(f"cannot create a working folder in {version_dir}: {exc}") from None


def _update_read(node: nuke.Node, pattern: str, first: int, last: int, colorspace: str, raw: bool) -> str:
    return node_mod.update_read_node(node, pattern, first, last, colorspace, raw).fullName()


def _frames_present(folder: str, node_name: str, ext: str) -> List[int]:
    """Frame numbers of ``<node>_NNNN<ext>`` in ``folder`` (a re-run completes a version)."""
    pattern = re.compile(re.escape(node_name) + r"_(\d+)" + re.escape(ext) + "$")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in (pattern.match(n) for n in names) if m)


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
