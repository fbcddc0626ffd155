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

import contextlib
import copy
import logging
import os
import shutil
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import nuke

from comfy_cluster import Batch, ComfyClusterError, JobCancelled, OutputFile, ServerPool, WorkflowError, frame_workflows

from . import destinations, exchange, frames, ledger, mainthread, nodeside, params, render, session
from . import node as node_mod
from .preview import Preview
from .report import failure_text, ranges
from .frames import Unit, unit_text
from .settings import RunError, Settings, pool_options

__all__ = ["Run", "RunCancelled", "POLL_SECONDS", "STATUS_INTERVAL", "pool_options"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
STATUS_INTERVAL = 0.25  # the status knob is updated at most this often (the bar at every poll)
NUKE_BUSY_WAIT = 0.25  # how often a run asks whether the artist's render is over
# Each run's working folders inside the version folder: ``.inputs-<random>``, ``.download-<random>``.
# Farm tasks of one job share the version folder; each removes only its own when it ends.
_INPUTS_DIR = ".inputs-"
_DOWNLOAD_DIR = ".download-"
_PREVIEW_DIR = ".preview-"
_clock = time.monotonic  # the status throttle's clock (tests replace it)


class RunCancelled(JobCancelled):
    """The user cancelled the run (Cancel button, the progress bar's cancel, Ctrl+C, script close)."""


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
        # One job per frame and view: (frame, view), view "" in a single-view script.
        self.sent_units: Tuple[Unit, ...] = tuple((f, v) for f in settings.frames for v in settings.views or ("",))
        self._render_errors: Dict[int, BaseException] = {}
        self._ledger: Optional[ledger.JobLedger] = None
        self.preview: Optional[Preview] = None  # the live sampling preview (interactive runs)
        self._format = render.FileFormat(exchange.PNG, settings.colorspace)
        self._expected: Dict[Unit, Tuple[Tuple[str, str], ...]] = {}  # SaveEXR files (subfolder, name)

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

    def jobs_ended(self, timeout: float) -> bool:
        """Wait (any thread) until every job sent has ended on its server: needs no main thread."""
        batch = self._batch
        return batch is None or bool(batch.wait(timeout))

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
                self._task = mainthread.call(nodeside.new_progress_task, f"{node_mod.NODE_LABEL}: {s.node_name}")
            try:  # a re-run of failed frames, or a farm chunk, reuses the version it names
                self.version_dir = destinations.version_folder(s.output_base, s.reuse_version)
            except OSError as exc:
                raise RunError(f"{s.node_name}: cannot create the output folder in {s.output_base}: {exc}") from None
            if s.carry_from:  # "Current frame": the last full run stays in view around it
                frames.carry_forward(s.carry_from, self.version_dir, s.node_name, s.frames, s.views)
            self._show(f"starting {len(s.frames)} frame(s) into {self.version_dir}", 0, force=True)
            with self._open_pool() as pool:  # the session's, shared with the runs going on
                # A task killed here before (no signal: Windows, SIGKILL) left jobs on the GPUs.
                ledger.reap(self.version_dir, pool.servers)
                self._ledger = ledger.JobLedger(self.version_dir)
                inputs_dir = self._working_dir(_INPUTS_DIR)
                self._format = self._choose_format(pool)
                per_frame_inputs = self._render(inputs_dir)
                if self._cancelled():
                    raise RunCancelled(f"{s.node_name}: cancelled before any frame was sent")
                self.paths = self._run_batch(pool, per_frame_inputs)
            return self.paths
        except BaseException as exc:
            self.error = exc
            self._report(exc)
            raise
        finally:
            if inputs_dir:
                shutil.rmtree(inputs_dir, ignore_errors=True)
            if self._ledger is not None:
                self._ledger.close()
            if self.preview is not None:
                self.preview.close()
            self._task = None  # releasing the last reference removes the bar from Nuke's screen
            self._batch = None
            if self._on_end is not None:
                self._on_end(self)
            self.finished.set()

    def _render(self, inputs_dir: str) -> Dict[Unit, Dict[str, str]]:
        """Render the used inputs for every frame and view; (frame, view) -> {loader id: file}."""
        s = self.settings
        if not s.needs_render:
            return {}
        os.makedirs(inputs_dir, exist_ok=True)
        stem = f"{s.node_name}_{s.uid}"
        ext = self._format.kind
        jobs = [(m, render.input_pattern(inputs_dir, stem, m.number, ext, bool(s.views))) for m in s.inputs]
        self._show(f"rendering the input, frames {ranges(s.frames)}", 0, force=True)
        try:
            failed = render.render_inputs(self.node, jobs, s.frames, self._format, busy=self._wait_for_nuke, views=s.views)
        except RunError:
            raise
        except Exception as exc:
            if "cancel" in str(exc).lower():
                raise RunCancelled(f"{s.node_name}: the render of the input was cancelled") from None
            raise RunError(f"{s.node_name}: rendering the input failed: {exc}") from exc
        out: Dict[Unit, Dict[str, str]] = {}
        for frame in s.frames:
            views = s.views or ("",)
            files = {v: {m.node_id: render.input_file(inputs_dir, stem, m.number, frame, ext, v) for m in s.inputs} for v in views}
            if frame not in failed and not all(os.path.isfile(p) for f in files.values() for p in f.values()):
                failed[frame] = "Nuke wrote no file"
            if frame in failed:
                # That frame fails alone, named; the others go on (a farm task then exits 1).
                self._render_errors[frame] = RunError(f"the input could not be rendered: {failed[frame]}")
            else:
                out.update({(frame, v): f for v, f in files.items()})
        self.sent_frames = tuple(f for f in s.frames if (f, (s.views or ("",))[0]) in out)
        self.sent_units = tuple(u for u in self.sent_units if u in out)
        if not self.sent_frames:
            raise RunError(
                failure_text(s.node_name, s.frames, self._render_errors, []), errors=dict(self._render_errors)
            )
        return out

    def _working_dir(self, kind: str) -> str:
        try:
            prefix = self._ledger.working_prefix(kind) if self._ledger is not None else kind
            return frames.working_dir(self.version_dir, prefix)
        except OSError as exc:
            raise RunError(f"{self.settings.node_name}: cannot create a working folder in {self.version_dir}: {exc}") from None

    def _wait_for_nuke(self) -> bool:
        """Nuke is rendering something else: say so, wait a little; True when cancelled."""
        self._show("waiting for Nuke's render to end before rendering the input", 0, force=True)
        if self.cancel_requested.wait(NUKE_BUSY_WAIT) or self._cancelled():
            raise RunCancelled(f"{self.settings.node_name}: cancelled while waiting for Nuke's render")
        return False

    def _workflows(self) -> List[Dict[str, Any]]:
        s = self.settings
        workflows = []
        for frame, _ in self.sent_units:
            wf = copy.deepcopy(s.workflow)
            params.apply(wf, s.params.get(frame, {}), skip=s.frame_input)
            workflows.append(wf)
        if s.frame_input:
            workflows = [frame_workflows(wf, [f], s.frame_input)[0] for wf, (f, _) in zip(workflows, self.sent_units)]
        if self._format.kind == exchange.EXR:
            # One output folder per job: SaveEXR names its files without telling (exchange).
            tokens = [f"{s.uid}_{f}{v}_{uuid.uuid4().hex[:12]}" for f, v in self.sent_units]
            done = [exchange.to_exr(wf, [m.node_id for m in s.inputs], t, s.exr_tonemap) for wf, t in zip(workflows, tokens)]
            self._expected = {u: d.outputs for u, d in zip(self.sent_units, done)}
            workflows = [d.workflow for d in done]
        return workflows

    @contextlib.contextmanager
    def _open_pool(self) -> Iterator[ServerPool]:
        s = self.settings
        try:
            shared = session.shared_pool(s.strategy, dict(pool_options))
            pool = shared.__enter__()
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        try:
            yield pool
        finally:
            shared.__exit__(None, None, None)

    def _choose_format(self, pool: ServerPool) -> render.FileFormat:
        """EXR when asked or possible (some server that can run the job has LoadEXR/SaveEXR:
        capability routing then sends the jobs there), else PNG; said on the node."""
        s = self.settings
        try:
            kind = exchange.choose(pool, s.workflow, [m.node_id for m in s.inputs], s.pixels)
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        note = exchange.exr_note(s.exr_tonemap) if kind == exchange.EXR else exchange.PNG_NOTE
        mainthread.post(node_mod.set_pixels_note, self.node, note)
        self._show(note, force=True)
        return render.FileFormat(kind, s.colorspace, s.exr_datatype, s.mask_channel)

    def _run_batch(self, pool: ServerPool, per_frame_inputs: Mapping[Unit, Dict[str, str]]) -> List[str]:
        s = self.settings
        try:
            workflows = self._workflows()
        except ComfyClusterError as exc:
            raise RunError(f"{s.node_name}: {exc}") from exc
        inputs = [per_frame_inputs[u] for u in self.sent_units] if per_frame_inputs else None
        if self.interactive:  # a live look at sampling; nobody looks without a GUI
            self.preview = Preview(self.node, self._working_dir(_PREVIEW_DIR), s.node_name)
        try:
            batch = pool.map_async(workflows, inputs=inputs, retries=2, on_event=self.preview.on_event if self.preview else None)
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
            if self._ledger is not None:  # which jobs are where, for a reap if this task is killed
                self._ledger.update(list(batch.jobs))
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
        errors: Dict[int, BaseException] = dict(self._render_errors)  # by frame: any of its views
        cancelled: List[int] = []
        ok: List[Tuple[Any, Unit]] = []
        for job, unit in zip(batch.jobs, self.sent_units):
            err = job.exception()
            if isinstance(err, JobCancelled):
                cancelled.append(unit[0])
            elif err is not None:
                errors.setdefault(unit[0], err)
            else:
                ok.append((job, unit))
        if stopped_by == "cancel":
            raise RunCancelled(f"{s.node_name}: cancelled ({len(ok)} of {len(self.sent_units)} frames were done)")
        download_root = self._working_dir(_DOWNLOAD_DIR)
        by_unit: Dict[Unit, str] = {}
        try:
            for i, (job, unit) in enumerate(ok):
                self._show(f"downloading frame {unit_text(unit)} ({i + 1}/{len(ok)})")
                try:
                    by_unit[unit] = self._take_output(job, unit, os.path.join(download_root, f"{unit[0]}{unit[1]}"))
                except (ComfyClusterError, OSError) as exc:
                    errors.setdefault(unit[0], exc)
        finally:
            shutil.rmtree(download_root, ignore_errors=True)
        cancelled = sorted(set(cancelled) - set(errors))
        failed = sorted(set(errors) | set(cancelled))
        # A frame is done when every view of it is.
        done_frames = sorted({f for f, _ in by_unit} - set(failed))
        paths = {f: by_unit[(f, v)] for f, v in by_unit if f in done_frames and v == (s.views or ("",))[0]}
        read_name = ""
        try:
            # Moved into a group while it ran (a cut and paste): the same id, another node object.
            self.node = mainthread.call(nodeside.alive, self.node, s.uid)
            mainthread.call(nodeside.record, self.node, self.version_dir, " ".join(map(str, failed)))
            if done_frames:
                ext = os.path.splitext(paths[done_frames[0]])[1]
                pattern = os.path.join(self.version_dir, frames.read_pattern(s.node_name, ext, bool(s.views))).replace("\\", "/")
                # The node's frames and those already in the version (a re-run completes it):
                # failed frames inside the range are Read errors (a render through the node stops on them).
                present = set(frames.present(self.version_dir, s.node_name, ext, (s.views or ("",))[0])) | set(s.frames)
                first, last = min(present), max(present)
                raw = self._format.kind == exchange.EXR
                read_name = mainthread.call(nodeside.update_read, self.node, pattern, first, last, s.colorspace, raw)
        except ValueError:  # Nuke's answer for a node deleted while the frames ran
            raise RunError(
                f"{s.node_name} was deleted while it ran; the frames are in {self.version_dir}",
                errors=errors,
                paths=[by_unit[u] for u in sorted(by_unit)],
            ) from None
        ordered = [by_unit[u] for u in self.sent_units if u in by_unit and u[0] in done_frames]
        if errors:
            raise RunError(failure_text(s.node_name, s.frames, errors, cancelled), errors=errors, paths=ordered)
        self._show(f"done: {len(done_frames)} frame(s) in {self.version_dir} - {read_name}", 100, force=True)
        return ordered

    def _take_output(self, job: Any, unit: Unit, dest_dir: str) -> str:
        """The frame's image as ``<version folder>/<node>_<frame>.<ext>`` (``<node>_<view>_<frame>``
        with views)."""
        frame = unit_text(unit)
        expected = self._expected.get(unit)
        if expected:  # SaveEXR reports nothing: its first file, named by us (exchange)
            files = [OutputFile(expected[0][1], expected[0][0], "output")]
            local = job.download(dest_dir, files=files)
        else:
            files = job.result().files
            local = job.download(dest_dir)
        if len(local) != len(files):
            raise ComfyClusterError(f"frame {frame}: expected {len(files)} file(s), got {len(local)}")
        chosen = frames.pick_image(files)
        if chosen is None:
            raise ComfyClusterError(f"frame {frame}: the workflow produced no image (add a SaveImage node)")
        source = local[chosen]
        ext = os.path.splitext(source)[1].lower() or ".png"
        target = os.path.join(self.version_dir, frames.frame_name(self.settings.node_name, unit[0], ext, unit[1]))
        # Our download is moved; a file on shared storage that ComfyUI wrote is linked or copied.
        frames.place(source, target, owned=frames.inside(source, dest_dir))
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
        if self.interactive or self.dialogs:  # the whole story on the node, where it stays
            mainthread.post(node_mod.set_status, self.node, f"failed - {text.replace(f'{name}: ', '', 1)}")
        if self.dialogs:
            mainthread.post(nodeside.dialog, self.node, text)
