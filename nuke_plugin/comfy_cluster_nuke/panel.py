"""The "ComfyUI Servers" panel: one row per server, Refresh, and the strategy to use.

Opened from the "ComfyUI Cluster" menu. Each row shows whether the server is online, its
running and pending jobs, its device, free VRAM and the last error. Refresh probes every server
(``pool.status(refresh=True)``) on a worker thread and fills the rows back on the main thread,
so a server that does not answer never freezes Nuke. The strategy chosen here is used by every
"ComfyUI Cluster Run" node whose strategy knob says ``default``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Sequence

import nuke
import nukescripts

from comfy_cluster import STRATEGIES, ComfyClusterError, ServerPool, ServerStatus
from comfy_cluster.balance import DEFAULT_STRATEGY
from comfy_cluster.config import servers_from_env, strategy_from_env

from . import mainthread
from . import gateway
from . import settings as run_mod

__all__ = ["PANEL_ID", "ServersPanel", "show", "format_row"]

log = logging.getLogger(__name__)

PANEL_ID = "uk.co.comfycluster.servers"
DEFAULT_CHOICE = "default"


def _gigabytes(value: Optional[int]) -> str:
    return f"{value / 1024 ** 3:.1f} GB" if value is not None else "-"


def format_row(status: ServerStatus) -> str:
    """One server's row: online, running, pending, device, VRAM free, error."""
    if not status.enabled:
        state = "disabled"
    elif not status.checked:
        state = "not checked"
    else:
        state = "online" if status.online else "OFFLINE"
    known = status.online
    cells = [
        state,
        f"running {status.queue_running if known else '-'}",
        f"pending {status.queue_pending if known else '-'}",
        status.device_name or "-",
        f"VRAM free {_gigabytes(status.vram_free)}",
    ]
    if status.error:
        cells.append(f"error: {status.error}")
    return "   |   ".join(cells)


class ServersPanel(nukescripts.PythonPanel):
    """The servers panel. Create and use it on the main thread only."""

    def __init__(self) -> None:
        super().__init__("ComfyUI Servers", PANEL_ID)
        self.strategy_knob = nuke.Enumeration_Knob("strategy", "strategy", [DEFAULT_CHOICE] + sorted(STRATEGIES))
        chosen = run_mod.default_strategy()
        if chosen:
            self.strategy_knob.setValue(chosen)
        self.strategy_knob.setTooltip("Used by nodes whose strategy is 'default'.")
        self.refresh_knob = nuke.PyScript_Knob("refresh", "Refresh")
        self.summary_knob = nuke.Text_Knob("summary", "", "")
        self.gateway_knob = nuke.Text_Knob("gateway", "gateway", self._gateway_text())
        self.addKnob(self.strategy_knob)
        self.addKnob(self.gateway_knob)
        self.addKnob(self.refresh_knob)
        self.addKnob(self.summary_knob)
        self.rows: List[nuke.Text_Knob] = []
        self._thread: Optional[threading.Thread] = None
        try:
            servers, _ = servers_from_env()
            self._set_rows([s.name for s in servers])
            self.summary_knob.setValue(self._strategy_text())
        except ComfyClusterError as exc:
            self.summary_knob.setValue(f"configuration: {exc}")

    # -- Nuke callbacks (main thread) -----------------------------------------------------------

    def knobChanged(self, knob: nuke.Knob) -> None:
        """Nuke calls this (main thread) for a click on Refresh or a new strategy."""
        name = knob.name()
        if name == "refresh":
            self.refresh()
        elif name == "strategy":
            value = str(self.strategy_knob.value())
            run_mod.set_default_strategy(None if value == DEFAULT_CHOICE else value)
            self.summary_knob.setValue(self._strategy_text())

    def refresh(self) -> None:
        """Probe every server in the background; the rows update when the answers arrive."""
        self.gateway_knob.setValue(self._gateway_text())
        if self._thread is not None and self._thread.is_alive():
            return
        self.summary_knob.setValue("refreshing ...")
        self._thread = threading.Thread(target=self._probe, name="comfy-cluster-nuke-servers", daemon=True)
        self._thread.start()

    @property
    def refreshing(self) -> bool:
        """Whether a refresh is still probing the servers."""
        return self._thread is not None and self._thread.is_alive()

    # -- worker ---------------------------------------------------------------------------------

    def _probe(self) -> None:
        statuses: List[ServerStatus] = []
        error: Optional[str] = None
        try:
            # A pool of its own, without the background poller, closed at once: the panel
            # leaves no thread behind.
            with ServerPool.from_env(background_status=False) as pool:
                statuses = pool.status(refresh=True)
        except ComfyClusterError as exc:
            error = str(exc)
        except Exception as exc:  # never leave the panel saying "refreshing" forever
            log.exception("refreshing the servers panel failed")
            error = repr(exc)
        mainthread.post(self._show, statuses, error)

    # -- main thread ----------------------------------------------------------------------------

    def _show(self, statuses: Sequence[ServerStatus], error: Optional[str]) -> None:
        if error is not None:
            self.summary_knob.setValue(f"configuration: {error}")
            return
        self._set_rows([s.name for s in statuses])
        for knob, status in zip(self.rows, statuses):
            knob.setValue(format_row(status))
        online = sum(1 for s in statuses if s.online)
        self.summary_knob.setValue(
            f"{online} of {len(statuses)} online, checked {time.strftime('%H:%M:%S')} - {self._strategy_text()}"
        )

    def _set_rows(self, names: Sequence[str]) -> None:
        if [k.label() for k in self.rows] == list(names):
            return
        for knob in self.rows:
            self.removeKnob(knob)
        self.rows = []
        for i, name in enumerate(names):
            knob = nuke.Text_Knob(f"server_{i}", name, "not checked yet")
            self.addKnob(knob)
            self.rows.append(knob)

    @staticmethod
    def _gateway_text() -> str:
        address = gateway.url()
        return f"{address} (ComfyUI clients can use this URL)" if address else "not running (ComfyUI Cluster > Start gateway)"

    def _strategy_text(self) -> str:
        chosen = run_mod.default_strategy()
        if chosen:
            return f"strategy {chosen} (chosen here)"
        env = strategy_from_env()
        return f"strategy {env} (NUKE_COMFYUI_STRATEGY)" if env else f"strategy {DEFAULT_STRATEGY} (default)"


_panel: Optional[ServersPanel] = None


def show() -> ServersPanel:
    """Open (or bring back) the servers panel and refresh it.

    Once the user closed it, Nuke may have destroyed the panel under the Python object, which
    then raises RuntimeError: a new panel is made.
    """
    global _panel
    if _panel is not None:
        try:
            _panel.show()
        except RuntimeError:
            log.info("the servers panel was closed; making a new one")
            _panel = None
    if _panel is None:
        _panel = ServersPanel()
        _panel.show()
    _panel.refresh()
    return _panel
