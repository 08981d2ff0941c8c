#!/usr/bin/env python3
"""Regenerates link/hot-text.ld: the functions a chain actually runs, placed together at the
start of the code so the kernel maps ~1 MB of it instead of nearly all 6 MB.

Why: the kernel maps a program's code in 64 KB "fault-around" windows. A `run` executes about
0.6 MB of functions spread over nearly every window of `.text`, so ~5 MB of code was resident in
every operator process (docs/performance.md, "Memory"). Placing those functions first keeps them
in a few windows.

How: runs two short chains (release build, sim agent; one in a throwaway git repository so the
commit path runs too) under valgrind's callgrind, children included (the `sim-agent`s), and
writes a linker script that puts every function it saw into a `.text.hot` output section, in
first-seen order, before `.text`. Each function is listed twice: by its exact section name
(dense, while the symbol hashes match this build) and then with the hash and crate
disambiguators wildcarded (a fallback that still groups the function, with its other generic
instances, when a dependency or toolchain update changes the hashes). Functions the script does
not name keep the linker's default order, so a stale script costs memory, never correctness.

Usage (valgrind and nm installed): cargo build --release && python3 link/hot-text.py
Then rebuild; `cargo bench --bench memory` shows the effect.
"""

import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "operator")
OUT = os.path.join(ROOT, "link", "hot-text.ld")


def chain(tmp, name, workdir, sessions):
    """Runs one chain of `sessions` sim sessions under callgrind, children included; returns
    its profile files, the operator's own first."""
    outs = os.path.join(tmp, name)
    os.makedirs(outs)
    env = dict(
        os.environ,
        OPERATOR_DATA_DIR=os.path.join(outs, "data"),
        OPERATOR_WORKDIR=workdir,
        OPERATOR_AGENT="sim",
        OPERATOR_SIM__STEP="20ms",
        OPERATOR_SIM__COMPLETE_AFTER=str(sessions - 1),
    )
    env.pop("RUST_BACKTRACE", None)
    cmd = [
        "valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=yes",
        f"--callgrind-out-file={outs}/cg.%p", BIN, "run", "--task", "hot text", "--scenario",
        "incomplete", "--quiet", "--max-continuations", str(sessions - 1),
    ]
    subprocess.run(cmd, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    files = [os.path.join(outs, f) for f in os.listdir(outs) if f.startswith("cg.")]
    return sorted(files, key=lambda p: int(p.rsplit(".", 1)[1]))


def profile(tmp):
    """Two chains: ten sessions in a plain directory (as `benches/memory.rs` runs), three in a
    git repository (the commit path). The operators' own profiles come first, so their
    functions lead the section; the agents' (`sim-agent`) follow."""
    plain = os.path.join(tmp, "plain")
    repo = os.path.join(tmp, "repo")
    os.makedirs(plain)
    os.makedirs(repo)
    git = ["git", "-C", repo, "-c", "user.name=hot", "-c", "user.email=hot@localhost"]
    subprocess.run(["git", "init", "-q", repo], check=True)
    with open(os.path.join(repo, "README"), "w") as f:
        f.write("hot text\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    a = chain(tmp, "a", plain, 10)
    b = chain(tmp, "b", repo, 3)
    return [a[0], b[0]] + a[1:] + b[1:]


def executed(files):
    """Function symbols callgrind saw run or called, in first-seen order, across all files."""
    order, seen = [], set()
    for path in files:
        names = {}
        for line in open(path, encoding="utf-8", errors="replace"):
            m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            i, name = m.groups()
            if name:
                names[i] = name
            name = names.get(i)
            if name and name not in seen:
                seen.add(name)
                order.append(name)
    return order


def wildcard(name):
    """The name with what changes between builds (hashes, crate disambiguators, LLVM suffixes)
    replaced by `*`."""
    p = re.sub(r"17h[0-9a-f]{16}E.*$", "17h*", name)
    p = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", p)
    p = re.sub(r"\.(constprop|isra|part|llvm|cold)\..*$", "*", p)
    return re.sub(r"\.\d+$", "*", p)


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: run `cargo build --release` first")
    nm = subprocess.run(["nm", BIN], check=True, capture_output=True, text=True).stdout
    functions = {
        f[2] for f in (line.split() for line in nm.splitlines()) if len(f) == 3 and f[1] in "tTwW"
    }
    with tempfile.TemporaryDirectory() as tmp:
        names = [n for n in executed(profile(tmp)) if n in functions]
    exact = [n for n in names if not re.search(r"[*?\[\]]", n)]
    fallback, seen = [], set(exact)
    for n in names:
        w = wildcard(n)
        if w not in seen:
            seen.add(w)
            fallback.append(w)
    with open(OUT, "w") as f:
        f.write("/* Generated by link/hot-text.py: the functions a chain runs, first. */\n")
        f.write("/* Used by build.rs for release builds on Linux; see docs/performance.md. */\n")
        f.write("SECTIONS {\n  .text.hot : {\n")
        for n in exact + fallback:
            # LLVM puts functions it deems cold (`#[cold]`: slow paths such as growing a Vec)
            # in `.text.unlikely.*`; those run too.
            f.write(f"    *(.text.{n} .text.unlikely.{n})\n")
        f.write("  }\n} INSERT BEFORE .text;\n")
    print(f"{OUT}: {len(exact)} functions, {len(fallback)} fallback patterns")


if __name__ == "__main__":
    main()
