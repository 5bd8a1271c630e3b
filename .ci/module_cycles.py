#!/usr/bin/env python3
"""Fails when a module of crates/lastcall/src imports back into a module that imports it
(ARCHITECTURE.md's invariant). Reads `crate::` paths in code (comments and unit-test modules
left out) at the level of the crate's top modules; a name re-exported at the crate root
counts as the module it comes from."""
import os
import re
import sys

src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lastcall", "src")
os.chdir(src)
lib = open("lib.rs").read()
reexported = {}
for m in re.finditer(r"pub use (\w+)::(\{[^;]*\}|\w+);", lib):
    for name in re.findall(r"\w+", m.group(2)):
        reexported[name] = m.group(1)
deps, where = {}, {}
for root, _, files in os.walk("."):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)[2:]
        parts = path[:-3].split("/")
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        if not parts:
            continue
        top = parts[0]
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", open(path).read())[0]
        code = "\n".join(line.split("//")[0] for line in text.split("\n"))
        for m in re.finditer(r"crate::(\w+)", code):
            name = m.group(1)
            target = name if (os.path.exists(name + ".rs") or os.path.isdir(name)) else reexported.get(name)
            if target and target != top:
                deps.setdefault(top, set()).add(target)
                where.setdefault((top, target), set()).add(path)
cycles = sorted((a, b) for a in deps for b in deps[a] if a in deps.get(b, ()) and a < b)
for a, b in cycles:
    print(f"{a} <-> {b}: {sorted(where[(a, b)])} import {b}, {sorted(where[(b, a)])} import {a}")
if cycles:
    print(f"{len(cycles)} pair(s) of modules import each other; see ARCHITECTURE.md's invariants")
    sys.exit(1)
print("no module imports back into one that imports it")
