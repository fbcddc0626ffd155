"""The gateway's history: ended prompts in the order they ended, per user, bounded in items and
bytes, and which server holds each file a prompt made (for ``/view``).

Like ComfyUI the history lives in memory and the oldest items go first; unlike one server it
also has a byte bound, since one item can list thousands of files. A user sees their own
items (an admin all of them); ``GET /history?max_items=N`` pages over what the user sees in
ComfyUI's way (the newest N, oldest first).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .auth import User

__all__ = ["History", "FileKey", "DEFAULT_HISTORY_ITEMS", "DEFAULT_HISTORY_BYTES"]

FileKey = Tuple[str, str, str]  # (type, subfolder, filename)
DEFAULT_HISTORY_ITEMS = 10000
DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024


@dataclass
class _Entry:
    item: Dict[str, Any]
    user: str
    size: int


class History:
    """Ended prompts and their files (loop thread only)."""

    def __init__(self, max_items: int = DEFAULT_HISTORY_ITEMS, max_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"history bounds must be positive (items {max_items}, bytes {max_bytes})")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: "collections.OrderedDict[str, _Entry]" = collections.OrderedDict()
        self.bytes = 0
        self.files: Dict[FileKey, str] = {}
        self._files_of: Dict[str, List[FileKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._entries

    def add(self, prompt_id: str, user: str, item: Dict[str, Any]) -> None:
        """Record an ended prompt (newest last); the oldest go beyond either bound."""
        size = len(json.dumps(item, default=str))
        old = self._entries.pop(prompt_id, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[prompt_id] = _Entry(item, user, size)
        self.bytes += size
        while len(self._entries) > 1 and (len(self._entries) > self.max_items or self.bytes > self.max_bytes):
            old_id, entry = self._entries.popitem(last=False)
            self.bytes -= entry.size
            self._forget_files(old_id)

    def note_files(self, prompt_id: str, server: str, keys: Iterable[FileKey]) -> None:
        """The files ``prompt_id`` made are on ``server``."""
        mine = self._files_of.setdefault(prompt_id, [])
        for key in keys:
            self.files[key] = server
            if key not in mine:
                mine.append(key)

    def files_of(self, prompt_id: str) -> List[FileKey]:
        """The files ``prompt_id`` made, as noted so far."""
        return list(self._files_of.get(prompt_id, []))

    def ids(self) -> List[str]:
        """The prompt ids held, oldest first."""
        return list(self._entries)

    def _forget_files(self, prompt_id: str) -> None:
        for key in self._files_of.pop(prompt_id, []):
            self.files.pop(key, None)

    def forget_unrecorded(self, prompt_id: str) -> None:
        """A prompt that left no history item (deleted while pending): forget its files."""
        if prompt_id not in self._entries:
            self._forget_files(prompt_id)

    def get(self, prompt_id: str, viewer: User) -> Dict[str, Any]:
        entry = self._entries.get(prompt_id)
        return {prompt_id: entry.item} if entry is not None and viewer.sees(entry.user) else {}

    def page(self, viewer: User, max_items: Optional[int] = None, offset: int = -1) -> Dict[str, Any]:
        """``GET /history``: ComfyUI's paging over the items ``viewer`` sees."""
        keys = [k for k, e in self._entries.items() if viewer.sees(e.user)]
        if offset < 0 and max_items is not None:
            offset = len(keys) - max_items
        out: Dict[str, Any] = {}
        for index, key in enumerate(keys):
            if index >= offset:
                out[key] = self._entries[key].item
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def delete(self, prompt_ids: Iterable[Any], viewer: User) -> None:
        for pid in prompt_ids:
            entry = self._entries.get(pid) if isinstance(pid, str) else None
            if entry is not None and viewer.sees(entry.user):
                self._remove(pid)

    def clear(self, viewer: User) -> None:
        for pid in [k for k, e in self._entries.items() if viewer.sees(e.user)]:
            self._remove(pid)

    def _remove(self, prompt_id: str) -> None:
        entry = self._entries.pop(prompt_id)
        self.bytes -= entry.size
        self._forget_files(prompt_id)
