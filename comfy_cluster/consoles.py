"""Text output that survives any console encoding (standard library only: ``nuke_setup.py``
runs it as a plain script in Nuke's Python, before any dependency is installed).

A redirected Windows console, or Python before 3.6 style settings, is cp1252: a server named
in Japanese, or a path with "Ł", raises UnicodeEncodeError in ``print``. Commands replace what
cannot be shown, and say once, naming the encoding, when something printed is not exact.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO

__all__ = ["tolerant_output", "unshowable_encoding", "encoding_note", "unquote"]


def tolerant_output(streams: Optional[Iterable[TextIO]] = None) -> None:
    """Make ``streams`` (stdout and stderr) replace what their encoding cannot show."""
    for stream in streams if streams is not None else (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # a closed or unusual stream: leave it as it is
                pass


def unshowable_encoding(text: str, stream: TextIO) -> Optional[str]:
    """The encoding of ``stream`` if it cannot show ``text`` exactly, else None."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return encoding
    except LookupError:  # an encoding Python does not know: nothing to say about it
        return None
    return None


def encoding_note(encoding: str, what: str) -> str:
    """One line saying that ``what`` was printed with ``?`` and how to see it exactly."""
    return (f"note: this output's encoding ({encoding}) cannot show every character of {what}; they are printed "
            "as ?. For the exact text set PYTHONUTF8=1 (cmd.exe: set PYTHONUTF8=1; PowerShell: $env:PYTHONUTF8 = '1')")


def unquote(text: str) -> str:
    """``text`` stripped of blanks and of one matching pair of outer quotes.

    cmd.exe keeps quotes in a variable's value (``set VAR="C:\\x"``) and passes single quotes
    on in arguments (``--out 'C:\\renders'``); no value of ours starts and ends with the same
    quote, so one pair is removed.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text
