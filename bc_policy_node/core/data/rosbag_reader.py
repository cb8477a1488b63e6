"""Opening one rosbag2 directory (sqlite3 or MCAP, any writer) with `rosbags`, and service events.

`BagReader` is rosbags' rosbag2 `Reader` plus the typestore to deserialize its messages;
`bagread` (locating, metadata, recovery, raw reads) opens every bag through it.
`service_event_info` / `setbool_request` read the parts of a service-event log message that
episode segmentation needs without the service's types.
"""
from __future__ import annotations

import struct
from contextlib import suppress
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from . import rostypes

SERVICE_EVENT_SUFFIX = "/_service_event"
SETBOOL_EVENT = "std_srvs/srv/SetBool_Event"


class BagReadError(ValueError):
    """A bag directory is missing, unreadable or needs recovery first."""


def is_service_event(topic: str, msgtype: str) -> bool:
    """A rosbag2 service-event log (`ros2 bag record --services/--all-services`)."""
    return topic.endswith(SERVICE_EVENT_SUFFIX) or "/srv/" in msgtype


def service_event_info(raw) -> Tuple[int, bytes, int, int]:
    """(event_type, client_gid, sequence_number, stamp ns) of a CDR service event.

    Every `<pkg>/srv/<Srv>_Event` starts with a service_msgs/msg/ServiceEventInfo (uint8
    event_type, builtin_interfaces/Time stamp, char[16] client_gid, int64 sequence_number), so
    it is read at fixed offsets (after the 4-byte CDR header) without the service's types.
    """
    if len(raw) < 4 + 40:
        raise BagReadError(f"service event of {len(raw)} bytes: too short for a ServiceEventInfo")
    e = "<" if raw[1] in (1, 3) else ">"
    sec, nsec = struct.unpack_from(e + "iI", raw, 8)
    (seq,) = struct.unpack_from(e + "q", raw, 36)
    return int(raw[4]), bytes(raw[16:32]), int(seq), sec * 1_000_000_000 + nsec


def setbool_request(raw) -> Optional[bool]:
    """request.data of a std_srvs/srv/SetBool_Event (None: the event carries no request, e.g.
    a response event or introspection without contents): the sequence<SetBool_Request, 1>
    right after the 40-byte ServiceEventInfo."""
    e = "<" if raw[1] in (1, 3) else ">"
    if len(raw) < 4 + 44:
        return None
    (n,) = struct.unpack_from(e + "I", raw, 44)
    return bool(raw[48]) if n == 1 and len(raw) > 48 else None


class BagReader:
    """rosbags' rosbag2 Reader (sqlite3 + MCAP) with a typestore built like rosbags' AnyReader
    (the bag's own message definitions, checked against their RIHS01 hashes; this package's
    typestore for types the bag does not define), except for service-event logs: AnyReader
    (rosbags 0.11.9) cannot open a bag that has one (it files `pkg/srv/X_Event` under
    `pkg/srv/msg/X_Event`, then fails its hash check with a KeyError). Their types are left out
    of the store; `service_event_info` reads what segmentation needs from the bytes.
    rosbags errors become BagReadError naming the bag."""

    def __init__(self, path: Path):
        from rosbags.rosbag2 import Reader

        self._path = path
        try:
            self._r = Reader(path)
        except Exception as e:  # noqa: BLE001 - rosbags raises several kinds
            raise BagReadError(f"{path}: rosbags cannot open it: {type(e).__name__}: {e}") from e

    def __enter__(self) -> "BagReader":
        from rosbags.interfaces import MessageDefinitionFormat as Fmt
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        try:
            self._r.open()
            self.connections = list(self._r.connections)
            typs: Dict[str, Any] = {}
            digests: Dict[str, str] = {}
            for c in self.connections:
                if is_service_event(c.topic, c.msgtype) or c.msgdef.format == Fmt.NONE or not c.msgdef.data:
                    continue
                if c.msgdef.format == Fmt.MSG:
                    typs.update(get_types_from_msg(c.msgdef.data, c.msgtype))
                else:
                    sep = "=" * 80 + "\n"
                    parts = c.msgdef.data.split(sep)[1:] if c.msgdef.data.startswith(sep + "IDL: ") \
                        else ["IDL: \n" + c.msgdef.data]
                    for part in parts:
                        typs.update(get_types_from_idl(part.split("\n", 1)[1]))
                if c.digest and c.digest.startswith("RIHS01_"):
                    digests[c.msgtype] = c.digest
            default = rostypes.typestore()
            store = get_typestore(Stores.EMPTY)
            if any(c.msgtype not in typs for c in self.connections):   # types the bag does not define
                store.register({k: v for k, v in default.fielddefs.items() if k not in typs})
            store.register(typs)
            for msgtype, digest in digests.items():
                if msgtype in store.fielddefs and store.hash_rihs01(msgtype) != digest:
                    raise BagReadError(f"message type {msgtype!r}: the bag's definition does not match "
                                       f"its hash {digest}")
            self.typestore = store
        except BagReadError:
            self._r.close()
            raise
        except Exception as e:  # noqa: BLE001
            with suppress(Exception):
                self._r.close()
            raise BagReadError(f"{self._path}: rosbags cannot read it: {type(e).__name__}: {e}") from e
        return self

    def messages(self, connections=()):
        return self._r.messages(connections=connections)

    def deserialize(self, raw, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def __exit__(self, *exc):
        self._r.close()
        return False
