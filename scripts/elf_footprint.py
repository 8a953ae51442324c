#!/usr/bin/env python3
"""Flash and RAM bytes of a linked Cortex-M firmware ELF, from its section headers.

usage: elf_footprint.py NAME ELF MODEL_BYTES ARENA_BYTES STACK_BYTES

Prints one line, `firmware NAME: flash F bytes (code and constants C + model M), RAM R
bytes (arena A + statics S + stack K measured)`, which bench/firmware.sh parses. Flash is
.vector_table + .text + .rodata + .data's load image; RAM is .data + .bss + .uninit plus
the firmware's own measured stack high-water mark.
"""
import struct
import sys

name, elf, model, arena, stack = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
b = open(elf, "rb").read()
if b[:4] != b"\x7fELF" or b[4] != 1:
    sys.exit(f"{elf}: not a 32-bit ELF")
shoff, = struct.unpack_from("<I", b, 0x20)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x2E)


def header(i):
    return struct.unpack_from("<IIIIIIIIII", b, shoff + i * shentsize)


stroff = header(shstrndx)[4]
size = {}
for i in range(shnum):
    nm, _typ, _flags, _addr, _off, sz = header(i)[:6]
    size[b[stroff + nm:b.index(b"\0", stroff + nm)].decode()] = sz
get = lambda n: size.get(n, 0)
flash = get(".vector_table") + get(".text") + get(".rodata") + get(".data")
statics = get(".data") + get(".bss") + get(".uninit")
print(f"firmware {name}: flash {flash} bytes (code and constants {flash - model} + model {model}), "
      f"RAM {statics + stack} bytes (arena {arena} + statics {statics - arena} + stack {stack} measured)")
