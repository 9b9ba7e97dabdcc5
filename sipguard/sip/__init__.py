"""The sans-I/O SIP core: messages, parser, serializer, transactions, dialogs, proxy.

The modules may be compiled with mypyc (``scripts/native.py build``): then C extensions sit
beside the sources and are imported instead.  A compiled module older than its source would
run old code, so importing the package refuses that (rebuild, or ``scripts/native.py clean``).
"""

from pathlib import Path as _Path


def _refuse_stale_native() -> None:
    here = _Path(__file__).parent
    for compiled in here.glob("*.so"):
        source = here / (compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            raise ImportError(f"{compiled.name} is older than {source.name}: run `python scripts/native.py build` "
                              "(or `clean` for pure Python)")


_refuse_stale_native()

from .actions import Action, Admission, Decided, DialogEnded, DialogStarted, Peer, Reject, Router, Send, Settle
from .errors import (
    BadExtension,
    LoopDetected,
    MessageTooLarge,
    ParseError,
    SipError,
    TooManyHops,
    UnsupportedUriScheme,
    VersionNotSupported,
)
from .message import NameAddr, Request, Response, SipUri, Via, parse_name_addr, parse_uri
from .parser import parse
from .proxy import CoreStats, Local, ProxyCore
from .serializer import serialize
from .timers import TimerConfig



def native_core() -> bool:
    """Whether the compiled (mypyc) SIP core is the one running."""
    from . import parser as _parser

    return not str(_parser.__file__).endswith(".py")


__all__ = [
    "native_core",
    "Action", "Admission", "Decided", "DialogEnded", "DialogStarted", "Peer", "Reject", "Router", "Send",
    "Settle", "BadExtension", "LoopDetected", "MessageTooLarge", "ParseError", "SipError", "TooManyHops",
    "UnsupportedUriScheme", "VersionNotSupported", "NameAddr", "Request", "Response", "SipUri", "Via",
    "parse_name_addr", "parse_uri", "parse", "CoreStats", "Local", "ProxyCore", "serialize", "TimerConfig",
]
