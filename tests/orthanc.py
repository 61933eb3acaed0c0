"""A real PACS for the tests: Orthanc (https://www.orthanc-server.com/), started on loopback.

:func:`running_orthanc` starts the ``Orthanc`` executable (Debian package ``orthanc``) with a
configuration of its own in a temporary folder: free loopback ports for DICOM and HTTP,
temporary storage and index folders, no plugins, no authentication, remote access off, the
called AE title checked. It never uses the system service's configuration, folders or
ports (4242, 8042), so it cannot collide with an Orthanc the package may have started.
It waits until Orthanc answers on both ports, and stops it afterwards (terminate, then kill).

The tests reach Orthanc's REST API with ``urllib`` (https://orthanc.uclouvain.be/book/users/rest.html).
Where Orthanc is missing the PACS tests are skipped, unless ``MSTOOLKIT_REQUIRE_ORTHANC=1``
(CI sets it) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from mstoolkit.clinical.pacs import PacsAddress

ORTHANC_AET = "ORTHANC"
#: The calling AET of the tests' senders, known to Orthanc as a modality.
TEST_CALLING_AET = "MSTOOLKIT"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def find_orthanc() -> str | None:
    """The path of the Orthanc executable, or None."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)


def orthanc_or_skip() -> str:
    """The Orthanc executable; skips the test where it is missing, fails instead under MSTOOLKIT_REQUIRE_ORTHANC=1."""
    executable = find_orthanc()
    if executable is None:
        message = "Orthanc is not installed (Debian/Ubuntu: apt-get install orthanc); the PACS tests need a real one"
        if os.environ.get("MSTOOLKIT_REQUIRE_ORTHANC") == "1":
            pytest.fail(message + ", and MSTOOLKIT_REQUIRE_ORTHANC=1 requires them to run.", pytrace=False)
        pytest.skip(message + ".")
    return executable


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM address, its REST base URL, and REST helpers for the tests."""

    address: PacsAddress
    rest_url: str
    log_path: Path

    def get(self, path: str):
        """GET ``path`` of the REST API, decoded from JSON."""
        with urllib.request.urlopen(self.rest_url + path, timeout=10) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` of the REST API as bytes."""
        with urllib.request.urlopen(self.rest_url + path, timeout=10) as response:
            return response.read()

    def request(self, method: str, path: str, body: dict | None = None):
        """POST, PUT or DELETE ``path`` with a JSON body; the answer decoded from JSON (or None)."""
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.rest_url + path, data=data, method=method), timeout=30) as response:
            answer = response.read()
        return json.loads(answer) if answer.strip() else None

    def instances(self) -> list[dict]:
        """Every stored instance: its simplified tags (Modality, SOPClassUID, SOPInstanceUID,
        SeriesInstanceUID, StudyInstanceUID, ...) plus its Orthanc identifier as ``ID``."""
        return [{**self.get(f"/instances/{oid}/simplified-tags"), "ID": oid} for oid in self.get("/instances")]

    def dataset(self, orthanc_id: str):
        """The stored file of one instance, parsed by pydicom."""
        import pydicom

        return pydicom.dcmread(io.BytesIO(self.get_bytes(f"/instances/{orthanc_id}/file")))

    def log_tail(self, n_lines: int = 30) -> str:
        """The end of Orthanc's log (shown when it fails to start)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n_lines:])
        except OSError:
            return "(no log)"


def write_configuration(folder: Path, dicom_port: int, http_port: int) -> Path:
    """An Orthanc configuration of its own in ``folder`` (storage, index and log beside it)."""
    configuration = {
        "Name": "mstoolkit-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # HTTP from loopback only
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "WebDavEnabled": False,
        "HttpThreadsCount": 4,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,  # so a wrong called AET is refused, as a strict PACS does
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {"mstoolkit": [TEST_CALLING_AET, "127.0.0.1", 11112]},  # the listener test puts its real port
        "DicomModalitiesInDatabase": False,  # modalities PUT over REST live in memory, gone when it stops
        "DicomScuTimeout": 10,
        "DicomScpTimeout": 10,
        "DicomThreadsCount": 2,
        "DicomAssociationCloseDelay": 0,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StableAge": 1,
        "DeidentifyLogs": True,
        "MetricsEnabled": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(configuration, indent=2))
    return path


def _answers(orthanc: Orthanc) -> bool:
    try:
        orthanc.get("/system")
    except OSError:
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", orthanc.address.port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def running_orthanc(folder: Path):
    """Start Orthanc with its own configuration in ``folder``; yield an :class:`Orthanc`; stop it."""
    executable = orthanc_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    configuration = write_configuration(folder, dicom_port, http_port)
    log_path = folder / "orthanc.log"
    orthanc = Orthanc(PacsAddress(ORTHANC_AET, "127.0.0.1", dicom_port), f"http://127.0.0.1:{http_port}", log_path)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([executable, str(configuration)], cwd=folder, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(orthanc):
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited at start (code {process.returncode}); its log ends:\n{orthanc.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer within {START_TIMEOUT_S:g} s; its log ends:\n{orthanc.log_tail()}", pytrace=False)
            time.sleep(0.1)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
