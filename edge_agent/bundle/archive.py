"""A strict, streaming reader of the bundle archive (POSIX pax/ustar tar, optionally gzip).

Why not ``tarfile``: its extraction filter quietly rewrites ``/etc/x`` to ``etc/x`` instead
of refusing it, the last of two same-named members wins, and it reads a pax header of any
declared size into memory. This reader accepts only what the format spec allows, refuses
everything else with a precise code, reads each byte once, and never holds more than one
chunk of file data in memory.

What it accepts: 512-byte ustar headers with the POSIX magic and a valid checksum, of type
regular file (``0`` or NUL) or pax extended header (``x``, at most 64 KiB, applying to the
next member; only ``path`` and ``size`` are used). Everything else (links, devices,
directories, FIFOs, global pax headers, GNU long names, sparse files) is refused. After the
end-of-archive blocks only zero bytes may follow.

It does not decide which names belong in a bundle (``verify`` does) and does no file I/O:
it reads from the binary stream it is given. Member names it yields are already checked to
be relative, normalised and UTF-8.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code

BLOCK = 512
CHUNK = 1 << 20
MAX_PAX_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_REGULAR = (b"0", b"\x00")
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"g": "global pax header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
}


@dataclass(slots=True)
class Member:
    """One regular file in the archive. Read its data with ``ArchiveReader.read_data``."""

    name: str
    size: int


class _RawReader:
    """Reads the raw input, counting bytes and enforcing the archive size limit."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self.count = 0

    def read(self, n: int) -> bytes:
        try:
            data = self._stream.read(n)
        except OSError as exc:
            raise BundleError(
                Code.READ_FAILED, f"reading the bundle failed: {exc.strerror or exc}"
            ) from None
        self.count += len(data)
        if self.count > self._max:
            raise BundleError(
                Code.TOO_LARGE, f"archive is larger than the limit of {self._max} bytes"
            )
        return data


class _GzipReader:
    """Inflates a single gzip member with bounded output per call and in total."""

    def __init__(self, raw: _RawReader, max_bytes: int) -> None:
        self._raw = raw
        self._max = max_bytes
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""
        self.count = 0

    def read(self, n: int) -> bytes:
        out = []
        wanted = n
        while wanted > 0 and not self._inflate.eof:
            if not self._pending:
                self._pending = self._raw.read(CHUNK)
                if not self._pending:
                    break
            try:
                data = self._inflate.decompress(self._pending, wanted)
            except zlib.error:
                raise BundleError(Code.ARCHIVE_MALFORMED, "gzip data is corrupt") from None
            self._pending = self._inflate.unconsumed_tail
            if self._inflate.eof and self._inflate.unused_data:
                raise BundleError(Code.ARCHIVE_MALFORMED, "data follows the end of the gzip stream")
            out.append(data)
            wanted -= len(data)
        result = b"".join(out)
        self.count += len(result)
        if self.count > self._max:
            raise BundleError(
                Code.TOO_LARGE, f"archive inflates to more than the limit of {self._max} bytes"
            )
        return result

    def check_end(self) -> None:
        if not self._inflate.eof:
            raise BundleError(Code.ARCHIVE_TRUNCATED, "gzip stream ends early")
        if self._pending or self._raw.read(1):
            raise BundleError(Code.ARCHIVE_MALFORMED, "data follows the end of the gzip stream")


class ArchiveReader:
    """Yields the members of one archive in order; see the module docstring."""

    def __init__(self, stream: BinaryIO, *, max_bytes: int, max_members: int) -> None:
        self._raw = _RawReader(stream, max_bytes)
        head = self._raw.read(2)
        self._head = head
        self._gzip: _GzipReader | None = None
        if head == _GZIP_MAGIC:
            self._gzip = _GzipReader(self._raw, max_bytes)
            self._gzip._pending = head
            self._head = b""
        self._max_members = max_members
        self._remaining = 0  # data bytes of the current member not yet read
        self._padding = 0

    @property
    def bytes_read(self) -> int:
        """Raw (possibly compressed) bytes consumed so far."""
        return self._raw.count

    def members(self) -> Iterator[Member]:
        count = 0
        pax: dict[str, str] | None = None
        while True:
            if self._remaining or self._padding:
                self.skip_data()
            header = self._read_exact(BLOCK, "a member header")
            if header == bytes(BLOCK):
                self._finish()
                if pax is not None:
                    raise BundleError(
                        Code.ARCHIVE_MALFORMED, "pax header is not followed by a member"
                    )
                return
            count += 1
            if count > self._max_members:
                raise BundleError(
                    Code.TOO_LARGE, f"archive has more than {self._max_members} members"
                )
            name, size, typeflag = _parse_header(header)
            if typeflag == b"x":
                if pax is not None:
                    raise BundleError(Code.ARCHIVE_MALFORMED, "two pax headers in a row")
                if size > MAX_PAX_BYTES:
                    raise BundleError(
                        Code.TOO_LARGE, f"pax header of {size} bytes exceeds {MAX_PAX_BYTES}"
                    )
                data = self._read_exact(size, "a pax header")
                self._skip_exact(-size % BLOCK)
                pax = _parse_pax(data)
                continue
            if typeflag not in _REGULAR:
                label = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
                raise BundleError(
                    Code.UNSAFE_MEMBER_TYPE,
                    f"member {_shown(name)} is a {label}; only regular files are allowed",
                )
            if pax is not None:
                name = pax.get("path", name)
                if "size" in pax:
                    size = _decimal(pax["size"], "pax size")
                pax = None
            check_member_name(name)
            self._remaining, self._padding = size, -size % BLOCK
            yield Member(name, size)

    def read_data(self) -> Iterator[bytes]:
        """Yield the current member's data in chunks of at most 1 MiB."""
        while self._remaining:
            chunk = self._read_exact(min(CHUNK, self._remaining), "member data")
            self._remaining -= len(chunk)
            yield chunk
        self._skip_exact(self._padding)
        self._padding = 0

    def skip_data(self) -> None:
        for _ in self.read_data():
            pass

    def _read(self, n: int) -> bytes:
        if self._gzip is not None:
            return self._gzip.read(n)
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data))
            return data
        return self._raw.read(n)

    def _read_exact(self, n: int, what: str) -> bytes:
        parts, wanted = [], n
        while wanted:
            data = self._read(wanted)
            if not data:
                raise BundleError(Code.ARCHIVE_TRUNCATED, f"archive ends in the middle of {what}")
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _skip_exact(self, n: int) -> None:
        if n:
            self._read_exact(n, "block padding")

    def _finish(self) -> None:
        second = self._read(BLOCK)
        if second and second != bytes(len(second)):
            raise BundleError(Code.ARCHIVE_MALFORMED, "end-of-archive marker is followed by data")
        while True:
            rest = self._read(CHUNK)
            if not rest:
                break
            if rest.count(0) != len(rest):
                raise BundleError(
                    Code.ARCHIVE_MALFORMED, "non-zero data after the end of the archive"
                )
        if self._gzip is not None:
            self._gzip.check_end()


def check_member_name(name: str) -> None:
    """Refuse absolute, non-normalised and otherwise unsafe member names."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleError(
            Code.UNSAFE_PATH, f"member name {_shown(name)} is absolute or contains \\ or NUL"
        )
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise BundleError(
                Code.UNSAFE_PATH, f"member name {_shown(name)} is not a normalised relative path"
            )


def _parse_header(block: bytes) -> tuple[str, int, bytes]:
    if block[257:265] != b"ustar\x0000":
        raise BundleError(Code.ARCHIVE_MALFORMED, "member header is not a POSIX ustar header")
    stored = _octal(block[148:156], "header checksum")
    actual = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != actual:
        raise BundleError(Code.ARCHIVE_MALFORMED, "member header checksum does not match")
    name = _cstring(block[0:100])
    prefix = _cstring(block[345:500])
    if prefix:
        name = prefix + "/" + name
    size = _octal(block[124:136], "member size")
    return name, size, block[156:157]


def _cstring(field: bytes) -> str:
    raw = field.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(Code.UNSAFE_PATH, "member name is not valid UTF-8") from None


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise BundleError(Code.ARCHIVE_MALFORMED, f"{what} uses base-256 encoding")
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if not digits or any(c not in b"01234567" for c in digits):
        raise BundleError(Code.ARCHIVE_MALFORMED, f"{what} is not an octal number")
    return int(digits, 8)


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise BundleError(Code.ARCHIVE_MALFORMED, f"{what} {text[:24]!r} is not a decimal number")
    return int(text)


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            raise BundleError(Code.ARCHIVE_MALFORMED, "pax record has no length")
        length = _decimal(data[pos:space].decode("ascii", "replace"), "pax record length")
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
            raise BundleError(Code.ARCHIVE_MALFORMED, "pax record length is wrong")
        body = record[space - pos + 1 : -1]
        key_bytes, sep, value_bytes = body.partition(b"=")
        if not sep:
            raise BundleError(Code.ARCHIVE_MALFORMED, "pax record has no '='")
        try:
            key, value = key_bytes.decode("utf-8"), value_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(Code.UNSAFE_PATH, "pax record is not valid UTF-8") from None
        if key in records:
            raise BundleError(Code.ARCHIVE_MALFORMED, f"pax record {key[:40]!r} appears twice")
        if key.startswith("GNU.sparse"):
            raise BundleError(Code.UNSAFE_MEMBER_TYPE, "sparse files are not allowed")
        if key == "linkpath":
            raise BundleError(Code.UNSAFE_MEMBER_TYPE, "pax linkpath is not allowed")
        records[key] = value
        pos += length
    return records


def _shown(name: str) -> str:
    return repr(name[:120])
