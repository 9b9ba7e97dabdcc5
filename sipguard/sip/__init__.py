"""The sans-I/O SIP core: messages, parser, serializer, transactions, dialogs, proxy.

The modules may be compiled with mypyc (docs/compiled.md): then C extensions sit beside the sources and
are imported instead.
"""

from .actions import (Action, Admission, Decided, DialogEnded, DialogStarted, EndedByToken, Peer, Reject, Router, Send,
                      Settle)
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

__all__ = [
    "Action", "Admission", "Decided", "DialogEnded", "DialogStarted", "EndedByToken", "Peer", "Reject", "Router", "Send",
    "Settle", "BadExtension", "LoopDetected", "MessageTooLarge", "ParseError", "SipError", "TooManyHops",
    "UnsupportedUriScheme", "VersionNotSupported", "NameAddr", "Request", "Response", "SipUri", "Via",
    "parse_name_addr", "parse_uri", "parse", "CoreStats", "Local", "ProxyCore", "serialize", "TimerConfig",
]
