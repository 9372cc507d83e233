"""Prune an unzipped pyarrow wheel down to what a Parquet writer loads (the ParquetLayer).

    python3.13 prune.py SITE_DIR [--list prune.txt]

SITE_DIR is the directory that holds ``pyarrow/`` (the layer's ``python/``). Removed: every path
the list names (prune.txt beside this file, see its header), and every copy of a shared library
stored under a name other than its SONAME, the one the dynamic linker looks for. Refused, before
anything is removed: a pattern that matches nothing, and removing a library that a kept ELF file
NEEDs. Prints what it removed and what is left.

Stdlib only, any platform's wheel: layers/parquet/Makefile runs it on the aarch64 wheel of the
layer, tests/template/test_parquet_layer.py on a copy of .venv's pyarrow, which must then still
write and read Parquet.
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_LIST = Path(__file__).resolve().parent / "prune.txt"
_ELF_MAGIC = b"\x7fELF"
_SHT_DYNAMIC = 6
_DT_NULL, _DT_NEEDED, _DT_SONAME = 0, 1, 14
_SECTION = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, little-endian
_DYNAMIC = struct.Struct("<qQ")  # Elf64_Dyn
_LARGEST = 8


class PruneError(Exception):
    pass


@dataclass(frozen=True)
class Linkage:
    soname: str | None
    needed: tuple[str, ...]


def linkage(path: Path) -> Linkage | None:
    """The SONAME and NEEDED entries of an ELF file's dynamic section; None if it is not ELF."""
    with path.open("rb") as elf:
        ident = elf.read(16)
        if ident[:4] != _ELF_MAGIC:
            return None
        if ident[4:6] != b"\x02\x01":  # ELFCLASS64, ELFDATA2LSB: every Linux wheel Lambda runs
            raise PruneError(f"{path}: not a 64-bit little-endian ELF file")
        elf.seek(0x28)
        (section_offset,) = struct.unpack("<Q", elf.read(8))
        elf.seek(0x3A)
        entry_size, count = struct.unpack("<HH", elf.read(4))

        def section(index: int) -> tuple[int, ...]:
            elf.seek(section_offset + index * entry_size)
            return _SECTION.unpack(elf.read(_SECTION.size))

        dynamic = next((s for s in map(section, range(count)) if s[1] == _SHT_DYNAMIC), None)
        if dynamic is None:
            return Linkage(None, ())
        strings = section(dynamic[6])  # sh_link: the section of the names
        elf.seek(strings[4])
        names = elf.read(strings[5])
        elf.seek(dynamic[4])
        table = elf.read(dynamic[5])
    soname, needed = None, []
    for tag, value in _DYNAMIC.iter_unpack(table[: len(table) // _DYNAMIC.size * _DYNAMIC.size]):
        if tag == _DT_NULL:
            break
        if tag in (_DT_NEEDED, _DT_SONAME):
            name = names[value : names.index(b"\0", value)].decode()
            if tag == _DT_SONAME:
                soname = name
            else:
                needed.append(name)
    return Linkage(soname, tuple(needed))


def read_patterns(list_file: Path) -> list[str]:
    lines = (line.strip() for line in list_file.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def plan(site: Path, patterns: list[str]) -> list[Path]:
    """The files to remove (relative to ``site``), checked; nothing is removed yet."""
    files = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file() or p.is_symlink())
    directories = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_dir() and not p.is_symlink())
    removed: set[Path] = set()
    for pattern in patterns:
        if pattern.endswith("/"):
            matched = [d for d in directories if PurePosixPath(d.as_posix()).full_match(pattern[:-1])]
            hits = {f for f in files if any(d in f.parents for d in matched)}
        else:
            hits = {f for f in files if PurePosixPath(f.as_posix()).full_match(pattern)}
        if not hits:
            raise PruneError(f"{pattern!r} matches nothing in {site}: has the wheel changed?")
        removed |= hits
    elf = {f: link for f in files if not (site / f).is_symlink() and (link := linkage(site / f)) is not None}
    for file, link in elf.items():
        # A copy under another name than its SONAME: the linker loads the SONAME's file.
        if link.soname and link.soname != file.name and file.with_name(link.soname) in elf:
            removed.add(file)
    needing: dict[Path, list[str]] = {}  # a removed library -> the kept files that NEED it
    for file, link in elf.items():
        for name in link.needed:
            if file not in removed and file.with_name(name) in removed:
                needing.setdefault(file.with_name(name), []).append(file.as_posix())
    if needing:
        raise PruneError(
            "; ".join(
                f"it removes {library.name}, which kept files NEED: {', '.join(sorted(kept))}"
                for library, kept in sorted(needing.items())
            )
        )
    return sorted(removed)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def prune(site: Path, list_file: Path = DEFAULT_LIST) -> list[Path]:
    removed = plan(site, read_patterns(list_file))
    before = size(site)
    for file in removed:
        (site / file).unlink()
    for directory in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(directory.iterdir()):
            directory.rmdir()
    after = size(site)
    freed, left_mb = (before - after) / 1e6, after / 1e6
    print(f"prune: removed {len(removed)} files, {freed:.1f} MB; {site}: {left_mb:.1f} MB left")
    left = sorted((p for p in site.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size, reverse=True)
    listed = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f}" for p in left[:_LARGEST])
    print(f"prune: largest files left (MB): {listed}")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the directory holding pyarrow/ (the layer's python/)")
    parser.add_argument("--list", type=Path, default=DEFAULT_LIST, help="the prune list (prune.txt)")
    args = parser.parse_args(argv)
    if not (args.site / "pyarrow").is_dir():
        print(f"prune: no pyarrow/ in {args.site}", file=sys.stderr)
        return 2
    try:
        prune(args.site, args.list)
    except PruneError as error:
        print(f"prune: {error}; nothing removed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
