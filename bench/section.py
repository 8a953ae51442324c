"""Replace one generated section of bench/RESULTS.md, keeping the rest.

Usage: python3 bench/section.py FILE NAME < content

The section is the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; it is
appended at the end of FILE if absent. Each bench script owns one section, so running
one benchmark never erases another's results.
"""
import os
import sys

path, name = sys.argv[1:]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
body = sys.stdin.read().rstrip("\n")
text = open(path).read() if os.path.exists(path) else ""
block = f"{begin}\n{body}\n{end}"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = head + block + tail
else:
    text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write(text)
os.replace(tmp, path)
