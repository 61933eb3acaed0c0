"""Talk to a PACS over DICOM networking (DIMSE): check it, send it results, receive studies from it.

A PACS (picture archiving and communication system) is the hospital's image archive.
Programs that speak DICOM over the network are *application entities* (AEs), each
known by an *AE title* (AET, up to 16 characters) and reached at a host and TCP port;
this module writes such an address ``AET@HOST:PORT``, e.g. ``ORTHANC@127.0.0.1:4242``.
Every exchange starts with an *association* (a negotiated session): the caller names
itself (the *calling* AET) and the PACS it wants (the *called* AET), and proposes
*presentation contexts*, pairs of "what kind of object" (the SOP class, e.g. MR Image
Storage) and "how it is encoded" (the transfer syntax, e.g. Explicit VR Little Endian).
A PACS may refuse an association whose called AET is not its own, or a calling AET it
does not know; both are the first things to check when a PACS says no.

Three services are used here (DICOM PS3.4 and PS3.7, https://dicom.nema.org/medical/dicom/current/output/html/):

- **C-ECHO** (Verification, PS3.4 Annex A): "are you there, and will you talk to me?".
  :func:`echo` checks the PACS before any work is done.
- **C-STORE** (Storage, PS3.4 Annex B): send one object; the PACS answers with a status,
  0x0000 for success, 0xB000, 0xB006 and 0xB007 for stored with a warning, anything else
  a failure (PS3.4 Table B.2-1). :func:`send` stores the SEG and SR the pipeline made.
- A **Storage SCP** (service class provider, PS3.4 B.2.2) is the receiving side:
  :class:`StudyListener` accepts C-STORE requests, saves each object, and once a study has
  had nothing new for a while (DICOM has no "end of study" message, so silence is the
  signal) hands the study's folder to a callback: this is how a PACS or a scanner routes
  studies to the segmentation pipeline automatically (``mstoolkit listen``).

The networking is done by pynetdicom (https://pydicom.github.io/pynetdicom/). Saved
files are named by UIDs and a hash of the study UID, and logs name studies the same
way: patient identifiers never appear in file names, log lines or error messages.
Notebook 08 introduces this module, with a :class:`StudyListener` in the notebook
standing in for the PACS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mstoolkit.data.io import MSToolkitInputError, write_atomic

__all__ = ["PacsAddress", "parse_pacs_address", "echo", "send", "StudyListener", "study_folder_name"]

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

#: C-STORE statuses that mean "stored, with a warning" (PS3.4 Table B.2-1): coercion of
#: data elements, elements discarded, data set does not match the SOP class.
STORE_WARNING_STATUSES = (0xB000, 0xB006, 0xB007)
#: Statuses the listener answers with (PS3.4 Table B.2-1): refused, out of resources;
#: error, cannot understand.
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

#: An association may propose at most 128 presentation contexts (PS3.8 9.3.2.2: context IDs are odd numbers 1 to 255).
MAX_PRESENTATION_CONTEXTS = 128

#: A UID is digits and dots, at most 64 characters (PS3.5 9.1). Checked before a UID becomes
#: a file name: a sender could otherwise write outside the output folder with "../".
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

ADDRESS_EXAMPLE = "ORTHANC@127.0.0.1:4242"


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class PacsAddress:
    """Where a DICOM application entity listens: its AE title, host and TCP port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _check_ae_title(ae_title: str, what: str) -> str:
    """``ae_title`` if it is a valid AE title (PS3.5 Table 6.2-1, VR AE), else a clear error."""
    if not isinstance(ae_title, str) or not ae_title.strip() or len(ae_title) > 16 or "\\" in ae_title or not ae_title.isprintable():
        raise MSToolkitInputError(
            f"{what} must be 1 to 16 printable characters without a backslash, got {ae_title!r}; e.g. 'MSTOOLKIT'."
        )
    return ae_title.strip()


def parse_pacs_address(text: str) -> PacsAddress:
    """Read ``'AET@HOST:PORT'`` (as ``--pacs`` takes it) into a :class:`PacsAddress`.

    >>> parse_pacs_address("ORTHANC@127.0.0.1:4242")
    PacsAddress(ae_title='ORTHANC', host='127.0.0.1', port=4242)
    >>> str(parse_pacs_address("PACS@pacs.example.org:104"))
    'PACS@pacs.example.org:104'
    """
    match = re.fullmatch(r"\s*([^@]+)@([^@:\s]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})\s*", text if isinstance(text, str) else "")
    if match is None:
        raise MSToolkitInputError(f"PACS address {text!r} is not AET@HOST:PORT; e.g. {ADDRESS_EXAMPLE}.")
    ae_title = _check_ae_title(match.group(1), "The AE title of a PACS address")
    port = int(match.group(3))
    if not 1 <= port <= 65535:
        raise MSToolkitInputError(f"PACS address {text!r} has port {port}; a TCP port is 1 to 65535, e.g. {ADDRESS_EXAMPLE}.")
    return PacsAddress(ae_title=ae_title, host=match.group(2).strip("[]"), port=port)


# --------------------------------------------------------------------------- the calling side: C-ECHO and C-STORE


def _application_entity(calling_aet: str, timeout: float):
    from pynetdicom import AE

    ae = AE(ae_title=_check_ae_title(calling_aet, "The calling AE title"))
    # One limit for every wait: connecting, negotiating, each reply, the network going quiet.
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae, pacs: PacsAddress, calling_aet: str, action: str):
    """An established association with ``pacs``, or an error saying what to check."""
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise MSToolkitInputError(
            f"The PACS at {pacs.host}:{pacs.port} rejected the association to {action}: check that {pacs.ae_title!r} is its own "
            f"AE title (the called AET) and that it accepts the calling AET {calling_aet!r} (add it as a modality on the PACS)."
        )
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # The PACS answered but refused every SOP class and transfer syntax offered, and pynetdicom aborted.
        kinds = ", ".join(sorted({_sop_class_name(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        raise MSToolkitInputError(
            f"{pacs} accepts none of the objects offered to {action} ({kinds}): check that the PACS stores these SOP classes "
            "and transfer syntaxes (some PACS must be configured to accept unknown or new SOP classes)."
        )
    raise MSToolkitInputError(
        f"No DICOM association with {pacs} to {action} (nothing answered, or the connection was dropped): check that the PACS "
        f"is running, that host {pacs.host} and port {pacs.port} are right, and that no firewall blocks the port."
    )


def echo(pacs: PacsAddress, *, calling_aet: str = "MSTOOLKIT", timeout: float = 10.0) -> None:
    """Check with a C-ECHO that ``pacs`` answers and accepts us as ``calling_aet``.

    Returns nothing when it does; raises :class:`~mstoolkit.data.io.MSToolkitInputError`
    naming the AE title, host and port and what to check when it does not.
    """
    ae = _application_entity(calling_aet, timeout)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = _associate(ae, pacs, calling_aet, "check it (C-ECHO)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = status.get("Status") if status is not None else None
    if code != 0x0000:
        answer = "no answer" if code is None else f"status 0x{code:04X}"
        raise MSToolkitInputError(f"{pacs} did not confirm the C-ECHO ({answer}): check the PACS's log and its settings for {calling_aet!r}.")
    log.info("C-ECHO to %s: success", pacs)


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def _storage_contexts(headers) -> list:
    """One presentation context per (SOP class, transfer syntax) among the files.

    Files in an uncompressed syntax also offer the other uncompressed little-endian ones,
    so a PACS that prefers one of them can still take them (pynetdicom re-encodes
    uncompressed data); a compressed file can only be sent as it is.
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom.presentation import build_context

    contexts = []
    for sop_class, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in headers}):
        syntaxes = [syntax]
        if not syntax.is_compressed:
            syntaxes += [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s != syntax]
        contexts.append(build_context(sop_class, syntaxes))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise MSToolkitInputError(
            f"The files need {len(contexts)} presentation contexts (SOP class and transfer syntax pairs), more than the "
            f"{MAX_PRESENTATION_CONTEXTS} one association can carry: send them in several calls, grouped by SOP class."
        )
    return contexts


def send(pacs: PacsAddress, paths: Sequence[str | os.PathLike], *, calling_aet: str = "MSTOOLKIT", timeout: float = 30.0) -> int:
    """Store each DICOM file of ``paths`` on ``pacs`` with C-STORE, in one association.

    The presentation contexts come from the files' SOP classes and transfer syntaxes.
    Returns the number of files stored (a stored-with-warning status counts, and is logged).
    A file that is not DICOM, a PACS that takes no context for a file, or a failure status
    raises :class:`~mstoolkit.data.io.MSToolkitInputError` naming the file's SOP class and
    its place in ``paths`` (not its path: folder names may hold patient identifiers).
    Files sent before a failure stay stored.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    paths = [Path(p) for p in paths]
    if not paths:
        return 0
    headers = []
    for number, path in enumerate(paths, start=1):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as error:
            ds, problem = None, "no such file" if isinstance(error, FileNotFoundError) else type(error).__name__
        else:
            # C-STORE needs both: which kind of object (the SOP class) and how it is encoded (the transfer syntax).
            problem = None if "SOPClassUID" in ds and "TransferSyntaxUID" in ds.file_meta else "no SOP class or transfer syntax"
        if problem is not None:
            raise MSToolkitInputError(
                f"File {number} of {len(paths)} to send is not a readable DICOM file with file meta ({problem}): "
                "send only the DICOM files the pipeline wrote."
            )
        headers.append(ds)

    ae = _application_entity(calling_aet, timeout)
    ae.requested_contexts = _storage_contexts(headers)
    assoc = _associate(ae, pacs, calling_aet, "store files (C-STORE)")
    stored = 0
    try:
        for number, (path, ds) in enumerate(zip(paths, headers), start=1):
            kind = _sop_class_name(ds.SOPClassUID)
            try:
                # A path is sent as it lies on disk, without decoding its pixel data first.
                status = assoc.send_c_store(path)
            except ValueError:
                raise MSToolkitInputError(
                    f"{pacs} accepted no presentation context for file {number} of {len(paths)} ({kind}, "
                    f"{ds.file_meta.TransferSyntaxUID.name}): check that the PACS stores this SOP class and transfer syntax."
                ) from None
            code = status.get("Status") if status is not None else None
            if code is None:
                raise MSToolkitInputError(
                    f"{pacs} gave no answer to the C-STORE of file {number} of {len(paths)} ({kind}) within {timeout:g} s "
                    f"({stored} stored before it): check the PACS's log, or pass a longer timeout."
                )
            if code in STORE_WARNING_STATUSES:
                log.warning("%s stored file %d of %d (%s) with warning status 0x%04X", pacs, number, len(paths), kind, code)
            elif code != 0x0000:
                raise MSToolkitInputError(
                    f"{pacs} refused file {number} of {len(paths)} ({kind}) with status 0x{code:04X} ({stored} stored before it): "
                    "check the PACS's log and that it accepts this SOP class from the calling AET."
                )
            stored += 1
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("C-STORE to %s: %d file(s) stored", pacs, stored)
    return stored


# --------------------------------------------------------------------------- the receiving side: a Storage SCP


def study_folder_name(study_uid: str) -> str:
    """The folder name of a study: ``study-`` and 12 hex digits of the SHA-256 of its StudyInstanceUID.

    Stable (the same study always lands in the same folder) and free of patient data.

    >>> study_folder_name("1.2.3")
    'study-c47f5b18b8a4'
    """
    return "study-" + hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:12]


class StudyListener:
    """A DICOM storage receiver (Storage SCP) that hands each complete study to a callback.

    Each instance received is saved as ``out_dir/<study folder>/<SOPInstanceUID>.dcm``, the
    study folder named by :func:`study_folder_name` (a short hash of the StudyInstanceUID,
    never patient data). When a study has had no new instance for ``idle_seconds``,
    ``on_study(study_folder)`` is called once for it, in the listener's worker thread (one
    study at a time); the folder then goes to :attr:`completed`. An exception there is
    logged in one line and recorded in :attr:`failed` as (folder, message), and the listener
    keeps serving. Instances of a study that arrive after its callback make it pending again.
    With ``on_study=None`` the listener only receives (notebook 08 uses it as a stand-in PACS).

    ``port=0`` picks a free port; :attr:`port` is the port bound once started. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`; ``mstoolkit listen`` calls
    :meth:`serve_until_interrupted`.

    Any calling AET may store; the called AET is not checked (a scanner's or PACS's routing
    rule names this listener's address, so a typo there still delivers).
    """

    def __init__(self, out_dir: str | os.PathLike, *, port: int = 0, ae_title: str = "MSTOOLKIT", host: str = "127.0.0.1",
                 idle_seconds: float = 10.0, on_study: Callable[[Path], object] | None = None) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise MSToolkitInputError(f"'port' must be 0 (pick a free one) to 65535, got {port!r}.")
        if not idle_seconds > 0:
            raise MSToolkitInputError(f"'idle_seconds' must be a positive number of seconds, got {idle_seconds!r}; e.g. 10.")
        self.out_dir = Path(out_dir)
        self.ae_title = _check_ae_title(ae_title, "The listener's AE title")
        self.host = host
        self.port = port
        self.idle_seconds = float(idle_seconds)
        self.on_study = on_study
        self.completed: list[Path] = []
        self.failed: list[tuple[Path, str]] = []
        self._finished: list[Path] = []
        self._last_arrival: dict[Path, float] = {}  # pending study folder -> time.monotonic() of its latest instance
        self._received: dict[Path, int] = {}
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None

    # ---- the C-STORE handler (runs in pynetdicom's association threads)

    def _handle_store(self, event) -> int:
        try:
            sop_uid = str(event.request.AffectedSOPInstanceUID or "")
            study_uid = str(event.dataset.get("StudyInstanceUID", "") or "")
        except Exception:  # a data set pydicom cannot decode
            log.warning("Refused an instance that could not be decoded")
            return STATUS_CANNOT_UNDERSTAND
        if not (UID_PATTERN.match(sop_uid) and len(sop_uid) <= 64 and UID_PATTERN.match(study_uid) and len(study_uid) <= 64):
            log.warning("Refused an instance without a valid SOPInstanceUID and StudyInstanceUID")
            return STATUS_CANNOT_UNDERSTAND
        folder = self.out_dir / study_folder_name(study_uid)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # As received, with the file meta pynetdicom adds: no decoding and re-encoding.
            write_atomic(folder / f"{sop_uid}.dcm", event.encoded_dataset())
        except OSError as error:
            log.error("Could not save an instance of %s: %s", folder.name, error.strerror or type(error).__name__)
            return STATUS_OUT_OF_RESOURCES
        with self._condition:
            if folder not in self._last_arrival:
                log.info("Receiving %s", folder.name)
            self._last_arrival[folder] = time.monotonic()
            self._received[folder] = self._received.get(folder, 0) + 1
        return 0x0000

    # ---- the worker: finds quiet studies and runs the callback

    def _quiet_study(self) -> Path | None:
        now = time.monotonic()
        with self._condition:
            for folder, last in self._last_arrival.items():
                if now - last >= self.idle_seconds:
                    del self._last_arrival[folder]
                    return folder
        return None

    def _work(self) -> None:
        poll = min(0.2, self.idle_seconds / 4)
        while not self._stopping.wait(poll):
            folder = self._quiet_study()
            if folder is None:
                continue
            with self._condition:
                n_instances = self._received.pop(folder, 0)
            log.info("%s complete (%d instances, nothing new for %g s)", folder.name, n_instances, self.idle_seconds)
            error = None
            if self.on_study is not None:
                try:
                    self.on_study(folder)
                except Exception as exc:  # the listener must keep serving whatever one study does
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    log.error("%s failed: %s", folder.name, error)
            with self._condition:
                if error is None:
                    self.completed.append(folder)
                else:
                    self.failed.append((folder, error))
                self._finished.append(folder)
                self._condition.notify_all()

    # ---- starting and stopping

    def start(self) -> StudyListener:
        """Start receiving in background threads and return at once (the listener itself)."""
        if self._server is not None:
            return self
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.out_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        # Every storage SOP class in every transfer syntax pydicom knows: the listener saves
        # the bytes as they come, so it need not decode what it accepts.
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        ae.maximum_associations = 4
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle_store)])
        except OSError as error:
            raise MSToolkitInputError(
                f"Cannot listen on {self.host}:{self.port} ({error.strerror or error}): pick another port (or 0 for a free one)."
            ) from None
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="StudyListener-worker", daemon=True)
        self._worker.start()
        log.info("Listening as %s on %s:%d, saving to %s", self.ae_title, self.host, self.port, self.out_dir)
        return self

    def stop(self) -> None:
        """Stop receiving, let a running callback finish, and release the port.

        Studies still waiting for their quiet time stay on disk without a callback (logged)."""
        if self._server is None:
            return
        for assoc in self._server.active_associations:  # a sender mid-study gets an A-ABORT, not silence
            assoc.abort()
        self._server.shutdown()  # stops accepting and closes the socket
        self._server = None
        self._stopping.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._condition:
            pending = sorted(folder.name for folder in self._last_arrival)
            self._last_arrival.clear()
        if pending and self.on_study is not None:  # a plain receiver (no callback) has nothing to process
            log.warning("Stopped with %d study(ies) received but not processed, kept in the output folder: %s", len(pending), ", ".join(pending))

    def __enter__(self) -> StudyListener:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def address(self) -> PacsAddress:
        """Where senders reach this listener (the port is the bound one once started)."""
        return PacsAddress(self.ae_title, self.host, self.port)

    def wait_for_studies(self, n: int, timeout: float) -> list[Path]:
        """Wait until ``n`` studies have been handled (callback done, successfully or not).

        Returns the folders of the studies handled so far, in the order they finished
        (see :attr:`completed` and :attr:`failed` for which succeeded). Raises ``TimeoutError``
        if fewer than ``n`` are handled within ``timeout`` seconds.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._finished) >= n, timeout=timeout):
                raise TimeoutError(
                    f"{len(self._finished)} of {n} studies handled within {timeout:g} s: were they sent to "
                    f"{self.address}? A study is handled {self.idle_seconds:g} s after its last instance."
                )
            return list(self._finished)

    def serve_until_interrupted(self) -> None:
        """Receive until Ctrl-C (or SIGTERM, as a service manager sends), then stop cleanly. For ``mstoolkit listen``."""
        import signal

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C alone stops it.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
        self.start()
        print(f"Listening as {self.address} (saving to {self.out_dir}); each study is processed {self.idle_seconds:g} s "
              "after its last image. Ctrl-C stops.", flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("Stopping the listener.", flush=True)
        finally:
            self.stop()
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        print(f"Stopped: {len(self.completed)} study(ies) processed, {len(self.failed)} failed.", flush=True)
