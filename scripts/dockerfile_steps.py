"""Run the Dockerfile's steps without Docker: a check for machines where Docker cannot run.

    sudo .venv/bin/python scripts/dockerfile_steps.py --root /tmp/dockercheck --user dockercheck \\
        --python /usr/bin/python3.11 [--drop 'TEXT' ...]

Reads ./Dockerfile and replays it under ``--root``, which stands in for the image's file
system (every path under /home/user becomes ROOT/home/user):

- FROM: the base image's Python is ``--python`` (put first on PATH as ``python``);
- steps before USER (creating the user) need the base image and are listed, not run;
- ENV, WORKDIR, USER: applied; COPY: the build context's files (those git knows, less
  .dockerignore) are copied in;
- RUN: run with bash, as ``--user`` (a non-root user) when this script runs as root, with the
  ENV so far and this machine's PIP_* settings (its package index); ``--drop`` removes a text
  from every RUN line first (e.g. an index URL this machine cannot reach);
- CMD and HEALTHCHECK: the CMD is started, the HEALTHCHECK's command is run against it until
  it passes (or 180 s), then the server is stopped.

Exit 0 when every step and the health check passed. Prints each step and its time.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_HOME = "/home/user"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    steps, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        steps.append((word.upper(), rest.strip()))
        current = ""
    return steps


def context_files() -> list[str]:
    """The build context: files git knows (tracked or not ignored), less .dockerignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        for p in patterns:
            p = p.removeprefix("**/")
            if fnmatch.fnmatch(path, p) or any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts))) \
                    or fnmatch.fnmatch(parts[-1], p):
                return True
        return False
    return [p for p in listed if (ROOT / p).is_file() and not ignored(p)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="stands in for the image's /")
    ap.add_argument("--user", default="", help="non-root user to run the steps as (when run as root)")
    ap.add_argument("--python", default=shutil.which("python3.11") or sys.executable, help="the base image's python")
    ap.add_argument("--drop", action="append", default=[], help="text removed from every RUN line")
    ap.add_argument("--port", type=int, default=8501)
    args = ap.parse_args()

    root = args.root.resolve()
    home = root / IMAGE_HOME.lstrip("/")
    shim = root / "base-image-bin"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "python").unlink(missing_ok=True)
    (shim / "python").symlink_to(args.python)
    user = pwd.getpwnam(args.user) if args.user and os.geteuid() == 0 else None
    env = {"PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    cwd = root
    user_seen = False
    health, cmd = None, None

    def here(text: str) -> str:
        return text.replace(IMAGE_HOME, str(home))

    def own(path: Path) -> None:
        if user:
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)

    def run(line: str, background: bool = False, **kw):
        full = ["bash", "-c", line]
        if user:
            full = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user.pw_name, "--"] + full
        print(f"    $ {line}", flush=True)
        if background:
            return subprocess.Popen(full, cwd=cwd, env=env, start_new_session=True, **kw)
        return subprocess.run(full, cwd=cwd, env=env, **kw)

    home.mkdir(parents=True, exist_ok=True)
    own(root)
    for word, rest in instructions(ROOT / "Dockerfile"):
        started = time.perf_counter()
        print(f"{word} {rest[:110]}", flush=True)
        if word == "FROM":
            print(f"    (base image's python: {args.python})")
        elif word == "USER":
            user_seen = True
        elif not user_seen:
            print("    (a step of the base image, as root: not run here)")
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = os.path.expandvars(here(value).replace("$PATH", env["PATH"]))
        elif word == "WORKDIR":
            cwd = Path(here(rest))
            cwd.mkdir(parents=True, exist_ok=True)
            own(cwd)
        elif word == "COPY":
            src, dest = [w for w in shlex.split(rest) if not w.startswith("--")]
            files = context_files()
            picked = files if src == "." else [f for f in files if f == src or f.startswith(src.rstrip("/") + "/")]
            if not picked:
                print(f"    COPY source {src} is empty or missing")
                return 1
            for f in picked:
                if src == ".":
                    target = cwd / dest / f
                elif (ROOT / src).is_dir():
                    target = cwd / dest / os.path.relpath(f, src)
                else:
                    target = cwd / dest / Path(f).name if dest.endswith("/") else cwd / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, target)
            own(cwd)
            print(f"    copied {len(picked)} files")
        elif word == "RUN":
            line = here(rest)
            for text in args.drop:
                line = line.replace(text, "")
            if run(line).returncode != 0:
                print(f"FAILED: RUN {rest}")
                return 1
        elif word == "HEALTHCHECK":
            health = here(rest.split(" CMD ", 1)[1])
        elif word == "CMD":
            cmd = shlex.join(json.loads(rest))
        elif word == "EXPOSE":
            pass
        else:
            print(f"    unknown instruction {word}")
            return 1
        print(f"    ({time.perf_counter() - started:.1f} s)", flush=True)

    if cmd is None or health is None:
        print("the Dockerfile needs a CMD and a HEALTHCHECK")
        return 1
    cmd = cmd.replace("8501", str(args.port))
    health = health.replace("8501", str(args.port))
    log = open(root / "server.log", "w")
    server = run(cmd.replace("0.0.0.0", "127.0.0.1"), background=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if run(health, capture_output=True).returncode == 0:
                print(f"HEALTHCHECK passed: the server answers on port {args.port} as {args.user or 'this user'}")
                return 0
            time.sleep(2)
        print(f"HEALTHCHECK failed for 180 s; server log: {root / 'server.log'}")
        return 1
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
