"""Fingerprints of a received instance: dataset digest and pixel digest (pure, streaming).

``digest`` is SHA-256 of the dataset bytes exactly as received in the negotiated transfer
syntax, File Meta Information (group 0002) excluded: every hop rewrites the meta, while
Orthanc stores the dataset bytes unchanged. ``pixel_digest`` is SHA-256 of the value of
(7FE0,0010) Pixel Data as received: for native pixels the value field; for encapsulated
pixels every item (offset table and fragments, with their item headers) up to but not
including the Sequence Delimitation Item. No Pixel Data gives SHA-256 of zero bytes.

Nothing is decoded: pydicom walks the element headers and seeks over the values.

Every parse is bounded, whoever sent the bytes. A deflated dataset is inflated as a stream
into a temporary file, at most ``limit`` bytes (:class:`DatasetTooLarge` past it), and only
that copy is walked and parsed: pydicom itself would inflate it whole, in memory. Before
pydicom parses anything, :func:`check_nesting` walks every element header, nested ones
too: each value fits inside its item and the file, sequences nest at most
``MAX_DEPTH`` deep, and every undefined-length sequence or item ends before the file does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, cast

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import (
    _read_file_meta_info,
    data_element_generator,
    read_dataset,
    read_preamble,
)
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

from gateway import filemap
from gateway.errors import DatasetTooLarge, DatasetUnreadable

PIXEL_DATA = 0x7FE00010
CHUNK = 1 << 20
# Pixel Data of at least this size is hashed on a second thread, in chunks of this size.
PARALLEL_PIXELS = 8 << 20
PARALLEL_CHUNK = 4 << 20
_PIXEL_POOL: ThreadPoolExecutor | None = None
_PIXEL_POOL_LOCK = threading.Lock()
EMPTY_SHA256 = hashlib.sha256(b"").digest()
#: The default cap on a dataset once inflated (``GATEWAY_MAX_INSTANCE_BYTES``).
MAX_INSTANCE_BYTES = 4 << 30
#: How deep sequences may nest; real instances stay below 10, pydicom recurses per level.
MAX_DEPTH = 32
#: How many element and item headers a dataset may hold. An enhanced multi-frame CT or MR
#: of thousands of frames has a few hundred thousand; a deflated run of empty elements
#: would otherwise cost minutes of CPU (and pydicom's parse of them, gigabytes).
MAX_ELEMENTS = 1_000_000
#: (0008,0005) Specific Character Set: pydicom's walk reads it whatever its length.
SPECIFIC_CHARACTER_SET = 0x00080005
#: Values longer than this are skipped, not read, by the top-level walk (``defer_size``).
WALK_DEFER_SIZE = 256
#: What read_header asks pydicom for: every other element is skipped, never held.
HEADER_KEYWORDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
}
#: The elements read_header's parse converts: the header's, and Specific Character Set.
_HEADER_TAGS = frozenset(int(Tag(keyword)) for keyword in HEADER_KEYWORDS.values()) | {
    SPECIFIC_CHARACTER_SET
}
#: Float, Double Float and Pixel Data: where pydicom's ``stop_before_pixels`` parse stops.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Tags of the items and delimiters that frame sequences and encapsulated values
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
ITEM_TAG = (0xFFFE, 0xE000)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)
# What pydicom raises on a File Meta it cannot read (a value of the wrong length, an unknown
# VR; struct.error: fewer than 12 bytes after it, starting with a 4-byte-length VR's header)
_UNREADABLE_META = (
    struct.error,
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    ValueError,
    KeyError,
    NotImplementedError,
)


@dataclass(frozen=True)
class Fingerprint:
    """The two digests recorded on the ledger, and the transfer syntax they were taken in.

    ``file_sha256`` is the SHA-256 of the whole file (preamble and File Meta included),
    taken in the same pass: the pipeline compares it with the hash the spool took when
    the file was received (:class:`gateway.ingest.spool.IncomingFile`).
    """

    digest: bytes
    pixel_digest: bytes
    transfer_syntax: str
    dataset_offset: int
    dataset_length: int
    file_sha256: bytes = b""


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes the gateway needs from a dataset. PatientID and issuer are PHI:
    they only ever leave this object as an HMAC (``patient_key``)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    modality: str
    body_part: str


@dataclass(frozen=True)
class WrittenMeta:
    """What a writer put before the dataset of a file it wrote itself: the preamble, the
    ``DICM`` prefix and a File Meta of well-formed group 0002 elements (explicit VR little
    endian, as pydicom writes them), and the Transfer Syntax UID that File Meta names.

    The listener writes each received dataset's File Meta (:mod:`gateway.ingest.file_meta`)
    and hands this to :func:`dataset_offset`, which then need not parse it again.
    """

    prefix: bytes
    syntax: str


def dataset_offset(stream: BinaryIO, *, written: WrittenMeta | None = None) -> tuple[int, UID]:
    """Offset of the dataset after the File Meta Information, and the transfer syntax.

    The one definition of where the dataset starts: the File Meta (group 0002, explicit
    VR little endian) is read element by element until the first element of another
    group, as pydicom reads it; its group length is not trusted. Every digest of the
    gateway and of the Orthanc plugin covers the bytes from this offset on.

    ``written``: the File Meta the caller wrote at the head of this file. When the file
    still starts with those bytes and an element of another group follows them whole,
    pydicom's reading would stop right there: that answer is given without the parse.
    Anything else (other bytes, a group 0002 element or a delimiter next, a dataset
    shorter than an element header) is parsed as usual.

    Raises
    ------
    DatasetUnreadable
        No DICM prefix, a File Meta element pydicom cannot read (such as an unknown VR),
        or no Transfer Syntax UID.
    """
    if written is not None:
        found = _offset_as_written(stream, written)
        if found is not None:
            return found
    stream.seek(0)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        # pydicom converts a raw element when it is first read: an unknown VR raises here
        syntax = meta.get("TransferSyntaxUID")
    except _UNREADABLE_META as exc:
        raise DatasetUnreadable(f"no readable DICOM File Meta Information: {exc}") from exc
    if not syntax:
        raise DatasetUnreadable("the File Meta Information has no Transfer Syntax UID")
    return stream.tell(), UID(str(syntax))


def _offset_as_written(stream: BinaryIO, written: WrittenMeta) -> tuple[int, UID] | None:
    """:func:`dataset_offset`'s answer for a file that starts with ``written.prefix``
    followed by a whole element header (12 bytes: a long VR's) outside group 0002 that is
    no Item Delimitation Item; None for any other file.

    pydicom reads the File Meta's elements up to the first tag outside group 0002 and
    steps back to its start (the Item Delimitation Item, checked first, ends its read
    after the tag instead); with fewer bytes left it stops elsewhere, or raises.
    """
    end = len(written.prefix)
    stream.seek(0)
    head = stream.read(end + 12)
    if len(head) < end + 12 or head[:end] != written.prefix:
        return None
    group, element = struct.unpack_from("<HH", head, end)
    if group == 0x0002 or (group << 16 | element) == ITEM_END:
        return None
    stream.seek(end)
    return end, UID(written.syntax)


@dataclass(frozen=True)
class PlainDataset:
    """A dataset ready to walk and parse: the stream as received, or its inflated copy.

    ``stream`` holds the dataset from ``offset`` on, encoded in ``syntax``; for a deflated
    instance (``inflated``) that is the inflated copy, in Explicit VR Little Endian.
    """

    stream: BinaryIO
    offset: int
    syntax: UID
    inflated: bool


@contextlib.contextmanager
def plain_dataset(
    stream: BinaryIO,
    *,
    limit: int | None = None,
    scratch: str | os.PathLike[str] | None = None,
    written: WrittenMeta | None = None,
) -> Iterator[PlainDataset]:
    """The dataset of the Part-10 ``stream``, inflated into a temporary file if deflated.

    Parameters
    ----------
    stream:
        The instance as received (seekable).
    limit:
        The most bytes the inflated dataset may take (default :data:`MAX_INSTANCE_BYTES`).
    scratch:
        The directory of the temporary file (default ``GATEWAY_TMPDIR``, else the system's).
    written:
        The File Meta the caller wrote at the head of ``stream`` (:func:`dataset_offset`).

    Raises
    ------
    DatasetTooLarge
        The dataset inflates past ``limit``.
    DatasetUnreadable
        The File Meta cannot be read, or the deflated stream is corrupt or truncated.
    """
    offset, syntax = dataset_offset(stream, written=written)
    if not syntax.is_deflated:
        yield PlainDataset(stream, offset, syntax, inflated=False)
        return
    folder = scratch if scratch is not None else os.environ.get("GATEWAY_TMPDIR")
    with tempfile.TemporaryFile(dir=folder) as inflated:
        inflate(stream, offset, cast(BinaryIO, inflated), limit=limit)
        yield PlainDataset(cast(BinaryIO, inflated), 0, ExplicitVRLittleEndian, inflated=True)


def inflate(stream: BinaryIO, offset: int, sink: BinaryIO, *, limit: int | None = None) -> int:
    """Inflate the raw deflate stream from ``offset`` into ``sink``, CHUNK bytes at a time.

    Memory stays at a few chunks whatever the ratio: ``decompress`` is asked for at most
    CHUNK bytes per call, the rest of its input waits in ``unconsumed_tail``.

    Returns
    -------
    int
        How many bytes were written.

    Raises
    ------
    DatasetTooLarge
        More than ``limit`` bytes would come out (nothing past ``limit`` is written).
    DatasetUnreadable
        The stream is not valid deflate, or ends before its final block.
    """
    cap = MAX_INSTANCE_BYTES if limit is None else limit
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    stream.seek(offset)
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or stream.read(CHUNK)
            # with no input left, decompress(b"") still hands out what zlib holds back
            out = inflater.decompress(data, min(CHUNK, cap - written + 1))
            if not data and not out:
                raise DatasetUnreadable("the deflated dataset is truncated")
            written += len(out)
            if written > cap:
                raise DatasetTooLarge(f"the deflated dataset inflates past {cap} bytes", limit=cap)
            sink.write(out)
    except zlib.error as exc:
        raise DatasetUnreadable(f"the deflated dataset does not inflate: {exc}") from exc
    sink.flush()
    return written


def read_header(
    stream: BinaryIO, *, limit: int | None = None, scratch: str | os.PathLike[str] | None = None
) -> InstanceHeader:
    """Parse the attributes before Pixel Data; raises DatasetUnreadable if pydicom cannot.

    The dataset is walked (:func:`check_nesting`) before pydicom parses it, and a deflated
    one is parsed from its bounded inflated copy (``limit``, ``scratch``: see
    :func:`plain_dataset`).
    """
    with plain_dataset(stream, limit=limit, scratch=scratch) as plain:
        check_nesting(plain.stream, plain.offset, plain.syntax)
        return _parse_header(plain)


def checked_header(
    stream: BinaryIO,
    *,
    limit: int | None = None,
    scratch: str | os.PathLike[str] | None = None,
    written: WrittenMeta | None = None,
) -> InstanceHeader:
    """:func:`check_structure` and :func:`read_header` at once: the check before a
    C-STORE is acked.

    A deflated dataset is inflated once. One walk does :func:`check_nesting`'s checks and
    keeps the header's top-level elements as :func:`_walk_top_level` would (:class:`_Walker`
    with ``keep``); only a dataset with a top-level element of undefined length (or a
    character set pydicom refuses) is walked a second time by pydicom's generator. The
    header is read from the kept elements (:func:`_walked_header`), or by pydicom's parse
    where the two could differ. ``written``: see :func:`dataset_offset`.
    """
    with plain_dataset(stream, limit=limit, scratch=scratch, written=written) as plain:
        walker = _walker(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
        walker.walk()
        kept = walker.kept
        if not walker.top_level_plain:
            _, kept = _walk_top_level(plain.stream, plain.offset, plain.syntax, keep=_HEADER_TAGS)
        header = _walked_header(plain, kept)
        return header if header is not None else _parse_header(plain)


def _walked_header(
    plain: PlainDataset, kept: dict[BaseTag, DataElement | RawDataElement]
) -> InstanceHeader | None:
    """The header from the elements a top-level walk kept, as :func:`_parse_header` reads it.

    pydicom's parse (``dcmread(stop_before_pixels=True, specific_tags=...)``) walks the
    same elements with the same generator up to Pixel Data and converts the same raw
    elements, so the answer is the same, for about a third of the CPU (it is on the path
    of every ack). None where the two could differ, for :func:`_parse_header` to answer:
    a value the walk deferred (longer than any valid one), or a first element whose VR
    field disagrees with the transfer syntax (pydicom would switch implicit/explicit).
    """
    if any(element.value is None for element in kept.values()):
        return None
    plain.stream.seek(plain.offset)
    first = plain.stream.read(6)
    if len(first) == 6:
        looks_implicit = not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)
        if looks_implicit != plain.syntax.is_implicit_VR:
            return None
    return _header_of(lambda: Dataset(kept))


def _parse_header(plain: PlainDataset) -> InstanceHeader:
    """The header's attributes, parsed by pydicom once :func:`check_nesting` has passed."""
    return _header_of(
        lambda: _parse(plain, defer_size=4096, keywords=list(HEADER_KEYWORDS.values()))
    )


def _header_of(parsed: Callable[[], Dataset]) -> InstanceHeader:
    """The :class:`InstanceHeader` of the dataset ``parsed`` returns; DatasetUnreadable if
    it cannot be parsed or has no SOP Class or Instance UID."""
    try:
        ds = parsed()
        values = {key: ds.get(keyword, "") for key, keyword in HEADER_KEYWORDS.items()}
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DatasetUnreadable(
            f"the dataset cannot be parsed: {type(exc).__name__}: {exc}"
        ) from exc
    header = InstanceHeader(**{key: str(value or "").strip() for key, value in values.items()})
    if not header.sop_instance_uid or not header.sop_class_uid:
        raise DatasetUnreadable("the dataset has no SOP Class UID or SOP Instance UID")
    return header


def _parse(
    plain: PlainDataset, *, defer_size: int | None, keywords: list[str] | None = None
) -> Dataset:
    """pydicom's parse of the attributes before Pixel Data (the caller walked them first),
    only of ``keywords`` if given."""
    plain.stream.seek(0)
    if not plain.inflated:
        return dcmread(
            plain.stream, stop_before_pixels=True, defer_size=defer_size, specific_tags=keywords
        )
    plain.stream.seek(plain.offset)
    return read_dataset(
        plain.stream,
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag == PIXEL_DATA,
        defer_size=defer_size,
        specific_tags=[Tag(keyword) for keyword in keywords] if keywords else None,
    )


def load_dataset(
    stream: BinaryIO,
    *,
    max_bytes: int,
    max_elements: int = MAX_ELEMENTS,
    limit: int | None = None,
    scratch: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Every attribute before Pixel Data, values read, if they take at most ``max_bytes``
    in at most ``max_elements`` elements and items.

    Raises
    ------
    DatasetTooLarge
        The attributes before Pixel Data take more than ``max_bytes`` or ``max_elements``
        (or the dataset inflates past ``limit``).
    DatasetUnreadable
        The dataset cannot be walked or parsed.
    """
    with plain_dataset(stream, limit=limit, scratch=scratch) as plain:
        check_nesting(plain.stream, plain.offset, plain.syntax, max_elements=max_elements)
        found = pixel_range(plain.stream, plain.offset, plain.syntax)
        end = found[0] if found is not None else plain.stream.seek(0, io.SEEK_END)
        if end - plain.offset > max_bytes:
            raise DatasetTooLarge(
                f"the attributes take more than {max_bytes} bytes", limit=max_bytes
            )
        try:
            ds = _parse(plain, defer_size=None)
            for _ in ds.iterall():  # convert every raw value while the walk's bounds hold
                pass
        except Exception as exc:  # pydicom raises many types on malformed input
            raise DatasetUnreadable(
                f"the dataset cannot be parsed: {type(exc).__name__}: {exc}"
            ) from exc
        return ds


def check_nesting(
    stream: BinaryIO,
    offset: int,
    syntax: UID,
    *,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> None:
    """Walk every element header, inside sequences too, without reading a value.

    Iterative, so a hostile depth costs no stack. Each defined length must fit inside the
    item or sequence that holds it and inside the file; sequences nest at most
    ``max_depth`` deep; an undefined-length sequence, item or value must end (with its
    delimiter) before the file does. VRs are told apart as pydicom does, so what passes
    here is what pydicom then parses, within these bounds.

    Raises
    ------
    DatasetTooLarge
        More than ``max_elements`` element and item headers.
    DatasetUnreadable
        On the first element that breaks a bound.
    """
    _walker(stream, offset, syntax, max_depth=max_depth, max_elements=max_elements).walk()


def _walker(
    stream: BinaryIO,
    offset: int,
    syntax: UID,
    *,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    keep: frozenset[int] | None = None,
) -> _Walker:
    """A :class:`_Walker` over the dataset; DatasetUnreadable for an unknown syntax."""
    try:
        return _Walker(stream, offset, syntax, max_depth, max_elements, keep=keep)
    except ValueError as exc:
        raise DatasetUnreadable(f"unknown transfer syntax {syntax}") from exc


@dataclass
class _Level:
    """An open item (holding elements) or sequence (holding items); ``end`` None: undefined.

    ``bound`` is where it must end at the latest: its own end, or the nearest defined end
    of the levels around it (the file's end for the dataset itself).
    """

    end: int | None
    sequence: bool
    bound: int


class _Walker:
    """:func:`check_nesting`'s state: where it is, and the items and sequences still open.

    With ``keep`` it also does :func:`_walk_top_level`'s work in the same pass (see
    :func:`checked_header`): every top-level element of a defined length is where
    pydicom's ``data_element_generator`` reads one, so the raw elements of the tags in
    ``keep`` before the pixels are kept here, built as the generator builds them. A
    top-level element of undefined length (pydicom parses or searches those its own way),
    or a Specific Character Set pydicom could not take, clears :attr:`top_level_plain`:
    the caller then asks :func:`_walk_top_level`.
    """

    def __init__(
        self,
        stream: BinaryIO,
        offset: int,
        syntax: UID,
        max_depth: int,
        max_elements: int,
        *,
        keep: frozenset[int] | None = None,
    ) -> None:
        self.stream = stream
        self.implicit = syntax.is_implicit_VR
        self.little = syntax.is_little_endian
        self.endian = "<" if self.little else ">"
        self._head = struct.Struct(self.endian + "HHL").unpack
        self._short = struct.Struct(self.endian + "H").unpack
        self._long = struct.Struct(self.endian + "L").unpack
        self.size = stream.seek(0, io.SEEK_END)
        self.pos = offset
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.elements_left = max_elements
        self.levels = [_Level(self.size, sequence=False, bound=self.size)]
        self.depth = 0
        self.keep = keep
        #: The raw top-level elements of the tags in ``keep`` before Pixel Data.
        self.kept: dict[BaseTag, DataElement | RawDataElement] = {}
        #: Whether :attr:`kept` is :func:`_walk_top_level`'s answer (see the class).
        self.top_level_plain = keep is not None
        self._before_pixels = True

    def walk(self) -> None:
        """Every header from the dataset's start to the end of the data, or raise."""
        while True:
            level = self.levels[-1]
            if level.end is not None and self.pos >= level.end:
                if self.pos > level.end:
                    raise DatasetUnreadable("an element runs past the end of its item or sequence")
                if len(self.levels) == 1:
                    return
                self._close()
                continue
            self.elements_left -= 1
            if self.elements_left < 0:
                raise DatasetTooLarge(f"the dataset has more than {self.max_elements} elements")
            head = self._read(12)  # a long VR's header; an item's or a short one's is 8
            if len(head) < 8:
                raise DatasetUnreadable(
                    "the data ends inside an undefined-length sequence or item"
                    if len(self.levels) > 1
                    else f"{len(head)} bytes after the last complete element"
                )
            group, element, length = self._head(head[:8])
            tag = group << 16 | element
            if level.sequence:
                self._item(tag, length, level)
            elif tag == ITEM_END and len(self.levels) > 1:
                self.pos += 8
                self._close()
            else:
                self._element(tag, head, length)

    def _read(self, size: int) -> bytes:
        self.stream.seek(self.pos)
        return self.stream.read(size)

    def _close(self) -> None:
        if self.levels.pop().sequence:
            self.depth -= 1

    def _open(self, end: int | None, *, sequence: bool) -> None:
        if sequence:
            self.depth += 1
            if self.depth > self.max_depth:
                raise DatasetUnreadable(f"sequences nest more than {self.max_depth} deep")
        bound = self.levels[-1].bound if end is None else min(end, self.levels[-1].bound)
        self.levels.append(_Level(end, sequence=sequence, bound=bound))

    def _fits(self, length: int, tag: int) -> int:
        end = self.pos + length
        if end > self.levels[-1].bound:
            raise DatasetUnreadable(
                f"{_named(tag)} declares {length} bytes, more than the data left"
            )
        return end

    def _item(self, tag: int, length: int, level: _Level) -> None:
        self.pos += 8
        if tag == SEQUENCE_END:
            self._close()
        elif tag != ITEM:
            raise DatasetUnreadable(f"expected an item in a sequence, found {_named(tag)}")
        elif length == UNDEFINED:
            self._open(None, sequence=False)
        else:
            self._open(self._fits(length, ITEM), sequence=False)

    def _element(self, tag: int, head: bytes, length: int) -> None:
        if tag >> 16 == 0xFFFE:  # items and delimiters belong to sequences only
            raise DatasetUnreadable(f"{_named(tag)} where an element should be")
        vr: bytes | None = None
        size = 8
        if not self.implicit:
            code = head[4:6]
            if code in _LONG_VRS:
                vr, size = code, 12
                if len(head) < 12:
                    raise DatasetUnreadable("the data ends inside an element header")
                length = self._long(head[8:12])[0]
            elif code in _SHORT_VRS:
                vr = code
                length = self._short(head[6:8])[0]
            else:
                # pydicom reads a 2-byte length (or an implicit element) where DCMTK, and so
                # Orthanc, assumes a 4-byte one: the two would not see the same dataset.
                raise DatasetUnreadable(f"{_named(tag)} has no standard VR ({code!r})")
        self.pos += size
        if self.top_level_plain and len(self.levels) == 1:
            self._note_top_level(tag, vr, length)
        if length != UNDEFINED:
            end = self._fits(length, tag)
            if vr == b"SQ" or (vr is None and _dictionary_vr(tag) == "SQ"):
                self._open(end, sequence=True)
            else:
                self.pos = end
        elif vr in (b"SQ", b"UN") or (vr is None and self._undefined_is_sequence(tag)):
            self._open(None, sequence=True)
        else:
            self._skip_to_delimiter(tag)

    def _note_top_level(self, tag: int, vr: bytes | None, length: int) -> None:
        """What ``data_element_generator`` yields for this top-level element (its value at
        :attr:`pos`), kept if :func:`_walk_top_level` would keep it."""
        if length == UNDEFINED:
            self.top_level_plain = False
            return
        if length > self.size - self.pos:
            return  # walk() refuses it next (_fits)
        charset = tag == SPECIFIC_CHARACTER_SET
        if self._before_pixels and tag in _PIXEL_TAGS:
            self._before_pixels = False
        wanted = self._before_pixels and self.keep is not None and tag in self.keep
        if not (charset or wanted):
            return
        name = vr.decode() if vr is not None else None
        value: bytes | None = None
        if length == 0:
            value = cast(bytes | None, empty_value_for_VR(name, raw=True))
        elif charset or length <= WALK_DEFER_SIZE:  # the generator never defers the charset
            value = self._read(length)
        if charset:
            try:  # as the generator does with it: pydicom's refusal is _walk_top_level's
                convert_encodings(convert_string(value or b"", self.little))
            except Exception:
                self.top_level_plain = False
                return
        if wanted:
            self.kept[BaseTag(tag)] = RawDataElement(
                BaseTag(tag), name, length, value, self.pos, self.implicit, self.little
            )

    def _undefined_is_sequence(self, tag: int) -> bool:
        """An undefined-length element of unknown VR is a sequence if the dictionary says so,
        or (private tags) if an item follows: pydicom looks ahead the same way."""
        vr = _dictionary_vr(tag)
        if vr is not None:
            return vr == "SQ"
        following = self._read(4)
        return len(following) == 4 and struct.unpack(self.endian + "HH", following) == ITEM_TAG

    def _skip_to_delimiter(self, tag: int) -> None:
        """Past the Sequence Delimitation Item closing an undefined-length value, as pydicom
        finds it: through the items of encapsulated pixels, else by searching for it."""
        position = self.pos
        while True:
            self.stream.seek(position)
            head = self.stream.read(8)
            if len(head) < 8:
                break
            group, element, length = struct.unpack(self.endian + "HHL", head)
            if (group, element) == (0xFFFE, 0xE0DD):
                self.pos = position + 8
                return
            if (group, element) != ITEM_TAG or position + 8 + length > self.size:
                break
            self.elements_left -= 1
            if self.elements_left < 0:
                raise DatasetTooLarge(f"the dataset has more than {self.max_elements} elements")
            position += 8 + length
        if tag == PIXEL_DATA:
            # Encapsulated pixels are items, then the delimiter (PS3.5 A.4): a search would
            # pass fragments, or a delimiter cut short, that DCMTK, and so Orthanc, refuses.
            raise DatasetUnreadable(
                f"the encapsulated Pixel Data is not items then its delimiter (byte {position})"
            )
        marker = struct.pack(self.endian + "HH", 0xFFFE, 0xE0DD)
        position = self.pos
        self.stream.seek(position)
        carry = b""
        while chunk := self.stream.read(CHUNK):
            window = carry + chunk
            found = window.find(marker)
            if found >= 0:
                self.pos = position - len(carry) + found + 8
                if self.pos > self.size:
                    break
                return
            carry = window[-3:]
            position += len(chunk)
        raise DatasetUnreadable(
            f"{_named(tag)} has an undefined length and no end before the data ends"
        )


def _named(tag: int) -> str:
    return "an item" if tag == ITEM else f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def fingerprint(
    stream: BinaryIO, *, limit: int | None = None, scratch: str | os.PathLike[str] | None = None
) -> Fingerprint:
    """Digest a Part-10 instance read from ``stream`` (seekable), in bounded memory.

    The element headers are walked first (seeking over values) to find Pixel Data; then
    the dataset is read once and each chunk feeds both digests. Over a large Pixel Data
    value the pixel digest runs on a second thread beside the dataset digest (hashlib
    releases the GIL), so one big instance hashes on two cores. A deflated dataset is
    hashed as received; its Pixel Data is found in the bounded inflated copy (``limit``,
    ``scratch``: see :func:`plain_dataset`).
    """
    with plain_dataset(stream, limit=limit, scratch=scratch) as plain:
        check_nesting(plain.stream, plain.offset, plain.syntax)
        return _fingerprint(stream, plain)


def fingerprint_and_header(
    stream: BinaryIO, *, limit: int | None = None, scratch: str | os.PathLike[str] | None = None
) -> tuple[Fingerprint, InstanceHeader]:
    """:func:`fingerprint` and :func:`read_header` at once: one inflate, one walk."""
    with plain_dataset(stream, limit=limit, scratch=scratch) as plain:
        check_nesting(plain.stream, plain.offset, plain.syntax)
        return _fingerprint(stream, plain), _parse_header(plain)


def _fingerprint(stream: BinaryIO, plain: PlainDataset) -> Fingerprint:
    """The digests of ``stream`` whose dataset ``plain`` has been walked."""
    if plain.inflated:
        offset, syntax = dataset_offset(stream)
        found = pixel_range(plain.stream, plain.offset, plain.syntax)
        pixel_digest = EMPTY_SHA256 if found is None else _hash_range(plain.stream, *found)
        whole = _hash_prefix(stream, offset)
        digest, length, _ = _hash_once(stream, offset, None, whole=whole)
    else:
        offset, syntax = plain.offset, plain.syntax
        whole = _hash_prefix(stream, offset)
        pixels = pixel_range(stream, offset, syntax)
        digest, length, pixel = _hash_once(stream, offset, pixels, whole=whole)
        pixel_digest = EMPTY_SHA256 if pixel is None else pixel
    return Fingerprint(
        digest=digest,
        pixel_digest=pixel_digest,
        transfer_syntax=str(syntax),
        dataset_offset=offset,
        dataset_length=length,
        file_sha256=whole.digest(),
    )


def _hash_prefix(stream: BinaryIO, offset: int) -> hashlib._Hash:
    """A SHA-256 fed with the bytes before the dataset (preamble and File Meta)."""
    stream.seek(0)
    prefix = stream.read(offset)
    if len(prefix) != offset:
        raise DatasetUnreadable("the file ends inside its File Meta Information")
    return hashlib.sha256(prefix)


def _read_chunks(stream: BinaryIO, size: int) -> Iterator[memoryview]:
    while chunk := stream.read(size):
        yield memoryview(chunk)


def _pixel_hasher() -> ThreadPoolExecutor:
    global _PIXEL_POOL
    with _PIXEL_POOL_LOCK:
        if _PIXEL_POOL is None:
            _PIXEL_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pixel-digest")
        return _PIXEL_POOL


def _hash_once(
    stream: BinaryIO,
    offset: int,
    pixels: tuple[int, int] | None,
    *,
    whole: hashlib._Hash | None = None,
) -> tuple[bytes, int, bytes | None]:
    """SHA-256 from ``offset`` to the end and of the ``pixels`` range, in one pass.

    A regular file is read through memory maps (no copy out of the page cache). ``whole``,
    if given, is fed the same bytes (the whole file's hash, its prefix already in it).

    Returns the dataset digest, the dataset length and the pixel digest (None without a
    range). A range that runs past the end of the stream raises DatasetUnreadable.
    """
    sha = hashlib.sha256()
    pixel = hashlib.sha256() if pixels is not None else None
    start, end = pixels if pixels is not None else (0, 0)
    parallel = pixel is not None and end - start >= PARALLEL_PIXELS
    pool = _pixel_hasher() if parallel else None
    stream.seek(offset)
    position = offset
    length = 0
    size = PARALLEL_CHUNK if parallel else CHUNK
    views = filemap.chunks(stream, size) or _read_chunks(stream, size)
    for view in views:
        lo, hi = max(start - position, 0), min(end - position, len(view))
        pending: list[Future[None]] = []
        if pixel is not None and lo < hi:
            if pool is not None:
                pending.append(pool.submit(pixel.update, view[lo:hi]))
            else:
                pixel.update(view[lo:hi])
        if whole is not None:
            if pool is not None:  # a third digest on the pool's other thread
                pending.append(pool.submit(whole.update, view))
            else:
                whole.update(view)
        sha.update(view)
        for done in pending:
            done.result()
        position += len(view)
        length += len(view)
    if pixel is not None and position < end:
        raise DatasetUnreadable("the Pixel Data element runs past the end of the file")
    return sha.digest(), length, pixel.digest() if pixel is not None else None


def pixel_range(stream: BinaryIO, offset: int, syntax: UID) -> tuple[int, int] | None:
    """Where the Pixel Data value lies, walking every top-level element header.

    Raises DatasetUnreadable when an element runs past the end of the stream, which is how
    a truncated instance shows up: its header parses, its last element does not fit.
    """
    return _walk_top_level(stream, offset, syntax)[0]


def _walk_top_level(
    stream: BinaryIO, offset: int, syntax: UID, *, keep: frozenset[int] = frozenset()
) -> tuple[tuple[int, int] | None, dict[BaseTag, DataElement | RawDataElement]]:
    """:func:`pixel_range`, keeping the raw elements of the tags in ``keep`` that come
    before Pixel Data (where pydicom's ``stop_before_pixels`` parse would stop)."""
    kept: dict[BaseTag, DataElement | RawDataElement] = {}
    before_pixels = bool(keep)
    size = stream.seek(0, io.SEEK_END)
    stream.seek(offset)
    try:
        implicit = syntax.is_implicit_VR
        little = syntax.is_little_endian
    except ValueError as exc:
        raise DatasetUnreadable(f"unknown transfer syntax {syntax}") from exc
    found: tuple[int, int] | None = None
    end = offset
    try:
        for element in data_element_generator(stream, implicit, little, defer_size=WALK_DEFER_SIZE):
            end = stream.tell()  # the generator leaves us just past the element
            short = (
                isinstance(element, RawDataElement)
                and element.length != 0xFFFFFFFF
                and isinstance(element.value, bytes)
                and len(element.value) != element.length
            )
            if end > size or short:
                raise DatasetUnreadable(f"element {element.tag} runs past the end of the data")
            if before_pixels:
                if element.tag in _PIXEL_TAGS:
                    before_pixels = False
                elif element.tag in keep and isinstance(element, RawDataElement):
                    kept[element.tag] = element
            if element.tag == PIXEL_DATA and isinstance(element, RawDataElement):
                # the Sequence Delimitation Item of encapsulated pixels is framing, not value
                found = (element.value_tell, end - 8 if element.length == 0xFFFFFFFF else end)
    except DatasetUnreadable:
        raise
    except Exception as exc:  # malformed lengths or tags inside the dataset
        raise DatasetUnreadable(
            f"the dataset cannot be walked: {type(exc).__name__}: {exc}"
        ) from exc
    if end != size:  # the generator stops quietly on a partial element header
        raise DatasetUnreadable(f"{size - end} bytes after the last complete element")
    return found, kept


def check_structure(
    stream: BinaryIO, *, limit: int | None = None, scratch: str | os.PathLike[str] | None = None
) -> UID:
    """Cheap pre-ack check: meta readable and every element fits (no hashing), deflated
    datasets included (their bounded inflated copy is walked). Returns the syntax received."""
    with plain_dataset(stream, limit=limit, scratch=scratch) as plain:
        _check_structure(plain)
    return dataset_offset(stream)[1]


def _check_structure(plain: PlainDataset) -> None:
    check_nesting(plain.stream, plain.offset, plain.syntax)
    pixel_range(plain.stream, plain.offset, plain.syntax)


def _hash_range(stream: BinaryIO, start: int, end: int) -> bytes:
    sha = hashlib.sha256()
    stream.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            raise DatasetUnreadable("the Pixel Data element runs past the end of the file")
        sha.update(chunk)
        remaining -= len(chunk)
    return sha.digest()


def dataset_digest(data: bytes) -> tuple[bytes, str]:
    """:func:`fingerprint`'s ``digest`` and ``transfer_syntax`` of an in-memory Part-10 file,
    without walking the dataset.

    For a reader that must judge bytes the gateway would refuse to take in: the Orthanc
    plugin hashes every stored copy it serves, and an altered copy may no longer be a
    well-formed dataset. Where the dataset starts is :func:`dataset_offset`'s answer, so
    whenever :func:`fingerprint` accepts a file the two digests are the same.

    Returns
    -------
    tuple of (bytes, str)
        SHA-256 of the bytes after the File Meta, and the Transfer Syntax UID it declares.

    Raises
    ------
    DatasetUnreadable
        When the File Meta cannot be read.
    """
    offset, syntax = dataset_offset(io.BytesIO(data))
    return hashlib.sha256(memoryview(data)[offset:]).digest(), str(syntax)


def fingerprint_bytes(data: bytes, *, limit: int | None = None) -> Fingerprint:
    """Convenience for small in-memory instances (tests, the Orthanc plugin)."""
    return fingerprint(io.BytesIO(data), limit=limit)
